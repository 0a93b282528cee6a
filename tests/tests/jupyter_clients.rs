//! Real Jupyter clients against cellblock: `jupyter server --gateway-url`
//! driven through its own REST API and websocket, and AG2's
//! `JupyterCodeExecutor`. Each runs a script from `tests/scripts/` with the
//! test tools' python; the scripts assert, these tests check they passed and
//! that the kernel they used was a sandbox that is gone afterwards.

use cellblock_tests::Server;
use reqwest::Method;
use std::process::{Command, Output};

/// The workspace's tests/scripts directory.
fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs `tests/scripts/NAME BASE [TOKEN]` with the tools' python; asserts it
/// succeeded and returns the kernel id from its closing `ok KERNEL_ID`.
async fn run_script(name: &'static str, base: &str, token: Option<&str>) -> String {
    let mut cmd = Command::new(cellblock_tests::tools().join("python"));
    cmd.arg(script(name)).arg(base);
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out: Output = tokio::task::spawn_blocking(move || cmd.output().expect("running python"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let kid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ok "))
        .unwrap_or_else(|| panic!("no 'ok KERNEL_ID' line from {name}:\n{stdout}"))
        .trim()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&kid).is_ok(), "{kid}");
    kid
}

/// The kernel was deleted through the client: no sandbox, no kernel process.
async fn assert_gone(s: &Server, kid: &str) {
    let (status, v) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{kid}")))
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(
        cellblock_tests::eventually(std::time::Duration::from_secs(15), || s
            .kernels()
            .is_empty())
        .await,
        "kernels left: {:?}",
        s.kernels()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_server_with_gateway_url_runs_kernels_in_cellblock() {
    let key = "jupyter-gw-k3y";
    let s = Server::start_with(&["--api-key", key]);
    // The token reaches cellblock through GatewayClient.auth_token, on REST
    // and on the proxied websocket alike.
    let kid = run_script("gateway_server.py", &s.base, Some(key)).await;
    assert_gone(&s, &kid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ag2_jupyter_code_executor_runs_code_blocks() {
    let s = Server::start();
    let kid = run_script("ag2_executor.py", &s.base, None).await;
    assert_gone(&s, &kid).await;
}
