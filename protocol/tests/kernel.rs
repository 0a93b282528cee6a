//! The client against a real ipykernel, started from `$CELLBLOCK_TEST_PYTHON`
//! over the ipc transport.
//!
//! Every wait is bounded: a kernel that does not answer fails the test with
//! a message instead of hanging it.

mod common;

use cellblock_protocol::client::{ClientOptions, Execution};
use cellblock_protocol::message::{ExecuteRequest, Message};
use cellblock_protocol::outputs::OutputCollector;
use cellblock_protocol::{ConnectionInfo, Content, ExecutionEvent, KernelClient};
use common::TempDir;
use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Generous bounds: the machine is small and may be busy building.
const START: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(60);

/// Awaits `fut`, failing the test if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// A running kernel process and its directory. Dropping it kills the
/// process (`kill_on_drop`) and removes the directory; if the test is
/// failing, the kernel's log is printed first.
struct Kernel {
    child: Child,
    info: ConnectionInfo,
    dir: TempDir,
}

impl Kernel {
    async fn start() -> (Self, KernelClient) {
        let python = common::python();
        let dir = TempDir::new("cbk");
        let info = ConnectionInfo::new_ipc(&dir.path().join("k"));
        let longest = info.ipc_path(info.control_port).expect("ipc transport");
        assert!(
            longest.len() < 100,
            "socket path {longest} is too long for a unix socket"
        );
        let conn = dir.path().join("conn.json");
        info.write(&conn).expect("writing the connection file");
        let log = std::fs::File::create(dir.path().join("kernel.log")).expect("kernel log");
        let log2 = log.try_clone().expect("kernel log");

        let child = Command::new(&python)
            .arg("-m")
            .arg("ipykernel_launcher")
            .arg("-f")
            .arg(&conn)
            // Keep IPython's profile and history out of the user's home.
            .env("IPYTHONDIR", dir.path().join("ipython"))
            .env("JUPYTER_RUNTIME_DIR", dir.path().join("runtime"))
            .env("PYDEVD_DISABLE_FILE_VALIDATION", "1")
            // If this test process dies without dropping the child (SIGKILL),
            // ipykernel's parent poller still ends the kernel.
            .env("JPY_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} -m ipykernel_launcher: {e}", python.display()));
        let mut kernel = Kernel { child, info, dir };

        let client = within(
            START,
            "the kernel's sockets",
            KernelClient::connect(&kernel.info, ClientOptions::default()),
        )
        .await
        .unwrap_or_else(|e| kernel.fail(&format!("connecting: {e}")));
        let info = within(START, "the kernel to be ready", client.wait_ready(START))
            .await
            .unwrap_or_else(|e| kernel.fail(&format!("wait_ready: {e}")));
        assert_eq!(info.status, "ok", "kernel_info_reply status");
        assert_eq!(info.implementation, "ipython", "kernel implementation");
        assert!(
            info.protocol_version.starts_with("5."),
            "protocol version {:?}",
            info.protocol_version
        );
        assert_eq!(
            info.language_info.get("name").and_then(|v| v.as_str()),
            Some("python"),
            "language_info: {:?}",
            info.language_info
        );
        assert!(
            kernel
                .child
                .try_wait()
                .expect("polling the kernel")
                .is_none(),
            "the kernel exited during startup"
        );
        (kernel, client)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kernel.log")).unwrap_or_default()
    }

    fn fail(&mut self, why: &str) -> ! {
        let status = self.child.try_wait().ok().flatten();
        panic!(
            "{why}\nkernel process status: {status:?}\n--- kernel log\n{}",
            self.log()
        );
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        within(limit, "the kernel process to exit", self.child.wait())
            .await
            .expect("waiting for the kernel process")
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kernel log ({})\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
    }
}

/// Everything one execution produced, in arrival order.
struct Ran {
    exec: Execution,
    iopub: Vec<Message>,
    replies: usize,
    others: Vec<String>,
}

/// Runs `code` and drains its events until it is complete.
async fn run(client: &KernelClient, code: &str) -> Ran {
    let mut exec = within(
        STEP,
        "execute_request to be sent",
        client.execute(ExecuteRequest::new(code)),
    )
    .await
    .expect("sending execute_request");
    let mut ran_iopub = Vec::new();
    let mut replies = 0;
    let mut others = Vec::new();
    let what = format!("execution of {code:?} to complete");
    within(STEP, &what, async {
        while let Some(event) = exec.next().await {
            match event {
                ExecutionEvent::Iopub(m) => ran_iopub.push(m),
                ExecutionEvent::Reply(_) => replies += 1,
                ExecutionEvent::InputRequest(m) => others.push(format!("stdin {}", m.msg_type())),
                ExecutionEvent::Other(ch, m) => others.push(format!("{ch:?} {}", m.msg_type())),
            }
        }
    })
    .await;
    assert!(
        exec.is_complete(),
        "events stopped before reply and idle arrived for {code:?} (client closed?)"
    );
    Ran {
        exec,
        iopub: ran_iopub,
        replies,
        others,
    }
}

impl Ran {
    fn stdout(&self) -> String {
        self.iopub
            .iter()
            .filter_map(|m| match &m.content {
                Content::Stream(s) if s.name == "stdout" => Some(s.text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn check_routing(&self, code: &str) {
        assert_eq!(self.replies, 1, "{code:?}: exactly one execute_reply");
        assert!(
            self.others.is_empty(),
            "{code:?}: unexpected {:?}",
            self.others
        );
        for m in &self.iopub {
            assert_eq!(
                m.parent_msg_id(),
                Some(self.exec.msg_id()),
                "{code:?}: iopub {} routed to the wrong execution",
                m.msg_type()
            );
        }
        // iopub: busy first, idle last, and the code echoed back.
        let states: Vec<&str> = self
            .iopub
            .iter()
            .filter_map(|m| match &m.content {
                Content::Status(s) => Some(s.execution_state.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            states.first(),
            Some(&"busy"),
            "{code:?}: status sequence {states:?}"
        );
        assert_eq!(
            states.last(),
            Some(&"idle"),
            "{code:?}: status sequence {states:?}"
        );
        let echoed = self.iopub.iter().find_map(|m| match &m.content {
            Content::ExecuteInput(i) => Some(i.code.as_str()),
            _ => None,
        });
        assert_eq!(echoed, Some(code), "{code:?}: execute_input");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_persists_and_stdout_arrives() {
    let (_kernel, client) = Kernel::start().await;

    let first = run(&client, "x = 21").await;
    first.check_routing("x = 21");
    let reply = first.exec.reply().expect("complete implies a reply");
    assert_eq!(reply.status, "ok", "x = 21: {reply:?}");
    assert_eq!(first.stdout(), "", "x = 21 printed something");

    let second = run(&client, "print(x*2)").await;
    second.check_routing("print(x*2)");
    let reply2 = second.exec.reply().expect("complete implies a reply");
    assert_eq!(reply2.status, "ok", "print(x*2): {reply2:?}");
    assert_eq!(second.stdout(), "42\n");
    assert!(second.exec.is_complete());
    // Both went into history, one after the other.
    let (a, b) = (reply.execution_count, reply2.execution_count);
    assert!(a.is_some(), "no execution_count in {reply:?}");
    assert_eq!(b, a.map(|a| a + 1), "execution counts {a:?} then {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_gives_an_error_reply_and_an_iopub_error() {
    let (_kernel, client) = Kernel::start().await;

    let ran = run(&client, "1/0").await;
    ran.check_routing("1/0");
    let reply = ran.exec.reply().expect("complete implies a reply");
    assert_eq!(reply.status, "error", "{reply:?}");
    assert_eq!(
        reply.extra.get("ename").and_then(|v| v.as_str()),
        Some("ZeroDivisionError"),
        "{reply:?}"
    );

    let errors: Vec<_> = ran
        .iopub
        .iter()
        .filter_map(|m| match &m.content {
            Content::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "iopub errors: {errors:?}");
    assert_eq!(errors[0].ename, "ZeroDivisionError");
    assert!(!errors[0].traceback.is_empty(), "empty traceback");

    let mut collector = OutputCollector::new(Default::default());
    for m in &ran.iopub {
        collector.apply(m);
    }
    let out = collector.finish();
    assert_eq!(
        out.error.as_ref().map(|e| e.ename.as_str()),
        Some("ZeroDivisionError"),
        "collected {out:?}"
    );

    // The kernel carries on after an error.
    let after = run(&client, "print('still here')").await;
    assert_eq!(after.exec.reply().map(|r| r.status.as_str()), Some("ok"));
    assert_eq!(after.stdout(), "still here\n");
}

/// Runs `code`, which must print 0..5000 one per line, and checks that
/// [`OutputCollector`] reassembles every line in order from at least
/// `min_streams` stream messages.
async fn check_5000_lines(client: &KernelClient, code: &str, min_streams: usize) {
    let ran = run(client, code).await;
    ran.check_routing(code);
    assert_eq!(ran.exec.reply().map(|r| r.status.as_str()), Some("ok"));
    let streams = ran
        .iopub
        .iter()
        .filter(|m| matches!(m.content, Content::Stream(_)))
        .count();
    assert!(
        streams >= min_streams,
        "{code:?}: {streams} stream messages, expected at least {min_streams}"
    );

    let mut collector = OutputCollector::new(Default::default());
    for m in &ran.iopub {
        collector.apply(m);
    }
    let out = collector.finish();
    assert!(!out.truncated, "{code:?}: output was truncated");
    assert_eq!(out.stderr, "", "{code:?}: unexpected stderr");
    assert!(
        out.error.is_none(),
        "{code:?}: unexpected error {:?}",
        out.error
    );
    let expected: String = (0..5000).map(|i| format!("{i}\n")).collect();
    if out.stdout != expected {
        let got: Vec<&str> = out.stdout.lines().collect();
        let first_bad = (0..5000)
            .find(|&i| got.get(i).copied() != Some(i.to_string().as_str()))
            .unwrap_or(5000);
        panic!(
            "{code:?}: stdout differs: {} lines, first wrong line {first_bad}: {:?}",
            got.len(),
            got.get(first_bad)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_lines_arrive_in_order() {
    let (_kernel, client) = Kernel::start().await;
    check_5000_lines(&client, "for i in range(5000): print(i)", 1).await;
    // The same with a flush every 250 lines, so the text is spread over at
    // least 20 stream messages and their order matters.
    check_5000_lines(
        &client,
        "import sys\nfor i in range(5000):\n    print(i)\n    if i % 250 == 0: sys.stdout.flush()",
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_then_shutdown_ends_the_process() {
    let (mut kernel, client) = Kernel::start().await;

    for round in 0..3 {
        within(STEP, "a heartbeat", client.ping(STEP))
            .await
            .unwrap_or_else(|e| kernel.fail(&format!("ping {round}: {e}")));
    }

    within(STEP, "shutdown_reply", client.shutdown(false, STEP))
        .await
        .unwrap_or_else(|e| kernel.fail(&format!("shutdown: {e}")));
    let status = kernel.wait_exit(STEP).await;
    assert!(status.success(), "kernel exited with {status}");

    // Nobody answers the heartbeat any more.
    let ping = within(
        STEP,
        "a heartbeat after exit",
        client.ping(Duration::from_secs(2)),
    )
    .await;
    assert!(ping.is_err(), "heartbeat answered after the kernel exited");
    // No request can be answered either.
    let info = within(
        STEP,
        "kernel_info after exit",
        client.kernel_info(Duration::from_secs(2)),
    )
    .await;
    assert!(
        info.is_err(),
        "kernel_info answered after the kernel exited"
    );
}
