//! Acceptance 1–6: stateful execution, rich outputs, errors, timeouts,
//! crashes, and isolation between sandboxes under concurrency.

use base64::Engine;
use cellblock_tests::Server;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_persists_across_calls() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let r = s.exec(&id, "x = 21").await;
    assert_eq!(r["status"], "ok", "{r}");
    let r = s.exec(&id, "print(x * 2)").await;
    assert_eq!(r["stdout"], "42\n", "{r}");
    assert_eq!(r["stderr"], "");
    let r = s.exec(&id, "def double(v):\n    return v * 2").await;
    assert_eq!(r["status"], "ok", "{r}");
    let r = s
        .exec(
            &id,
            "import sys\nprint(double(x)); print('warn', file=sys.stderr)",
        )
        .await;
    assert_eq!(r["stdout"], "42\n", "{r}");
    assert_eq!(r["stderr"], "warn\n", "{r}");
    assert_eq!(r["execution_count"], 4, "{r}");
    let r = s.exec(&id, "x + 1").await;
    assert_eq!(r["outputs"][0]["type"], "execute_result", "{r}");
    assert_eq!(r["outputs"][0]["data"]["text/plain"], "22", "{r}");
    assert!(uuid::Uuid::parse_str(r["execution_id"].as_str().unwrap()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_and_tables_are_rich_outputs() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    for code in [
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
        // A figure left open at the end of the cell is shown too.
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([3, 1, 2])",
    ] {
        let r = s.exec(&id, code).await;
        assert_eq!(r["status"], "ok", "{r}");
        let pngs: Vec<_> = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["data"]["image/png"].as_str())
            .collect();
        assert_eq!(pngs.len(), 1, "one chart expected: {r}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(pngs[0].trim())
            .expect("png is base64");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(bytes.len() > 1000);
    }
    let r = s
        .exec(
            &id,
            "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})",
        )
        .await;
    let out = &r["outputs"][0];
    assert_eq!(out["type"], "execute_result", "{r}");
    assert!(
        out["data"]["text/html"]
            .as_str()
            .unwrap()
            .contains("<table"),
        "{r}"
    );
    assert!(
        out["data"]["text/plain"].as_str().unwrap().contains('x'),
        "{r}"
    );
    let r = s
        .exec(
            &id,
            "from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))",
        )
        .await;
    assert_eq!(r["outputs"][0]["type"], "display_data", "{r}");
    assert_eq!(r["outputs"][0]["data"]["text/html"], "<b>hi</b>", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_tracebacks() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let r = s.exec(&id, "print('before')\n1/0").await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["stdout"], "before\n");
    assert_eq!(r["error"]["ename"], "ZeroDivisionError", "{r}");
    assert_eq!(r["error"]["evalue"], "division by zero", "{r}");
    let tb = r["error"]["traceback"].as_array().unwrap();
    assert!(!tb.is_empty(), "{r}");
    assert!(
        tb.iter().any(|l| l.as_str().unwrap().contains("1/0")),
        "{r}"
    );
    // Tracebacks are plain text for agents: no ANSI colour codes.
    assert!(!r.to_string().contains("\\u001b["), "{r}");
    let r = s.exec(&id, "def f(:").await;
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"]["ename"], "SyntaxError", "{r}");
    let r = s.exec(&id, "print('still fine')").await;
    assert_eq!(r["stdout"], "still fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_interrupts_and_keeps_state() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    s.exec(&id, "kept = 'yes'").await;
    let start = Instant::now();
    let r = s
        .exec_with(&id, json!({"code": "while True: pass", "timeout_s": 2}))
        .await;
    let took = start.elapsed();
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["state_lost"], false, "{r}");
    assert_eq!(r["error"]["ename"], "KeyboardInterrupt", "{r}");
    // 2 s plus the 3 s interrupt grace, with slack for a loaded machine.
    assert!(took < Duration::from_secs(2 + 3 + 5), "took {took:?}");
    let r = s.exec(&id, "print(kept)").await;
    assert_eq!(r["stdout"], "yes\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_restarts_a_kernel_that_ignores_sigint() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    s.exec(&id, "lost = 1").await;
    let code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.1)";
    let r = s
        .exec_with(&id, json!({"code": code, "timeout_s": 1}))
        .await;
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["state_lost"], true, "{r}");
    assert_eq!(r["kernel_restarted"], true, "{r}");
    let r = s.exec(&id, "print('lost' in globals())").await;
    assert_eq!(r["stdout"], "False\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_death_is_reported_and_recovered() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    s.exec(&id, "x = 1").await;
    let r = s
        .exec(&id, "import os; print('bye', flush=True); os._exit(1)")
        .await;
    assert_eq!(r["status"], "crashed", "{r}");
    assert_eq!(r["state_lost"], true, "{r}");
    assert_eq!(r["kernel_restarted"], true, "{r}");
    let r = s.exec(&id, "print('x' in globals())").await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["stdout"], "False\n", "{r}");
    assert_eq!(r["execution_count"], 1, "a fresh kernel counts from 1: {r}");
    // A kernel killed between executions is replaced on the next one.
    let r = s
        .exec(
            &id,
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        )
        .await;
    assert_eq!(r["status"], "crashed", "{r}");
    let r = s.exec(&id, "print(2)").await;
    assert_eq!(r["stdout"], "2\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_separate_and_concurrency_keeps_outputs_apart() {
    // 20 executions at once per sandbox: above the default queue bound of 16.
    let s = Server::start_with(&["--max-queue", "32"]);
    let a = s.create(json!({})).await;
    let b = s.create(json!({})).await;
    s.exec(&a, "secret = 'only-in-a'").await;
    let r = s.exec(&b, "print('secret' in globals())").await;
    assert_eq!(r["stdout"], "False\n", "{r}");
    let r = s.exec(&a, "print(secret)").await;
    assert_eq!(r["stdout"], "only-in-a\n", "{r}");
    s.delete(&a).await;
    s.delete(&b).await;

    let s = std::sync::Arc::new(s);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(s.create(json!({})).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (n, id) in ids.iter().enumerate() {
        s.exec(id, &format!("me = 'sandbox-{n}'")).await;
        for i in 0..20 {
            let (s, id) = (s.clone(), id.clone());
            tasks.spawn(async move {
                let code = format!(
                    "import time\nfor k in range(3):\n    print(me, {i}, k)\n    time.sleep(0.001)"
                );
                let r = s.exec(&id, &code).await;
                (n, i, r)
            });
        }
    }
    let mut counts = vec![Vec::new(); 10];
    while let Some(joined) = tasks.join_next().await {
        let (n, i, r) = joined.expect("task");
        let want: String = (0..3).map(|k| format!("sandbox-{n} {i} {k}\n")).collect();
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["stdout"], want, "outputs mixed up: {r}");
        counts[n].push(r["execution_count"].as_i64().unwrap());
    }
    for mut c in counts {
        c.sort();
        // One at a time per sandbox: counts 2..=21, each exactly once.
        assert_eq!(c, (2..=21).collect::<Vec<i64>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_in_home_import_but_cannot_replace_the_launcher() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let r = s
        .exec(
            &id,
            "open('mymod.py', 'w').write('V = 7')\nimport mymod\nprint(mymod.V)",
        )
        .await;
    assert_eq!(r["stdout"], "7\n", "{r}");
    // A planted launcher must not be what starts the next kernel.
    s.exec(
        &id,
        "open('cellblock_kernel.py', 'w').write('raise SystemExit(3)')",
    )
    .await;
    let r = s.exec(&id, "import os; os._exit(1)").await;
    assert_eq!(r["status"], "crashed", "{r}");
    let r = s.exec(&id, "print('fresh kernel')").await;
    assert_eq!(r["stdout"], "fresh kernel\n", "{r}");
}
