//! JupyterLab's own client library against cellblock: `@jupyterlab/services`
//! from npm, run in Node with `ws` (tests/node/jlab_services.mjs), negotiates
//! the `v1.kernel.websocket.jupyter.org` subprotocol, starts a kernel,
//! executes, gets `image/png` for a chart and shuts the kernel down.

use cellblock_tests::Server;
use reqwest::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory `./scripts/test.sh` installed tests/node's lockfile into
/// (`node_modules` with `@jupyterlab/services` and `ws`).
fn node_dir() -> PathBuf {
    let dir = std::env::var_os("CELLBLOCK_TEST_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "CELLBLOCK_TEST_NODE is not set: run ./scripts/test.sh, which installs \
                 @jupyterlab/services and ws from tests/node/package-lock.json into \
                 target/test-node and sets it (or run `npm ci` in a copy of tests/node \
                 and set it to that directory yourself)"
            )
        });
    // Relative paths are taken from the workspace root, like CELLBLOCK_BIN.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join(dir);
    assert!(
        dir.join("node_modules/@jupyterlab/services").is_dir()
            && dir.join("node_modules/ws").is_dir(),
        "CELLBLOCK_TEST_NODE={} has no node_modules with @jupyterlab/services and ws: \
         run ./scripts/test.sh to (re)install them",
        dir.display()
    );
    dir
}

/// tests/node/jlab_services.mjs, copied next to the installed node_modules:
/// Node resolves an ES module's imports from the importing file's directory
/// (NODE_PATH does not apply to `import`), so the script runs from there.
fn installed_script(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/jlab_services.mjs");
    let dst = dir.join("jlab_services.mjs");
    // Atomically: a concurrent run never reads a half-written script.
    let tmp = dir.join(format!(".jlab_services.mjs.{}", std::process::id()));
    std::fs::copy(&src, &tmp).expect("copying jlab_services.mjs");
    std::fs::rename(&tmp, &dst).expect("installing jlab_services.mjs");
    dst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyterlab_services_runs_a_kernel_over_the_v1_protocol() {
    let dir = node_dir();
    let script = installed_script(&dir);
    let s = Server::start();
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .arg(&base)
            .current_dir(&dir)
            .output()
            .expect("running node (install Node.js 20 or newer)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "jlab_services.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary: Value = stdout
        .lines()
        .next_back()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary line:\n{stdout}\n{stderr}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(
        summary["protocol"], "v1.kernel.websocket.jupyter.org",
        "{summary}"
    );
    assert_eq!(summary["stdout"], "sandbox /home/user", "{summary}");
    let kid = summary["kernel_id"].as_str().expect("kernel_id");

    // The client shut its kernel down; what it ran is in the sandbox's trace.
    let (_, v) = s.call(s.req(Method::GET, "/v1/sandboxes")).await;
    assert!(
        !v["sandboxes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == kid)),
        "the kernel was shut down: {v}"
    );
    let (status, nb) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{kid}/notebook")))
        .await;
    assert_eq!(status, 200, "{nb}");
    let cells = nb["cells"].as_array().expect("cells");
    let chart = cells
        .iter()
        .find(|c| cellblock_tests::nb_text(&c["source"]).contains("plt.plot"))
        .unwrap_or_else(|| panic!("no chart cell in the trace: {nb}"));
    assert!(
        chart["outputs"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x["data"]["image/png"].is_string())),
        "{chart}"
    );
}
