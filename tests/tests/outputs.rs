//! Output fidelity: floods arrive complete and in order, caps truncate with a
//! flag instead of exhausting the broker, display updates follow nbclient, and
//! the kernel sees only the environment it was given.

use cellblock_tests::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_arrives_complete_and_in_order() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let r = s
        .exec_with(
            &id,
            json!({"code": "for i in range(30000):\n    print(i, flush=True)", "timeout_s": 120}),
        )
        .await;
    assert_eq!(r["status"], "ok", "{}", r["error"]);
    assert_eq!(r["truncated"], false);
    let out = r["stdout"].as_str().unwrap();
    let want: String = (0..30000).map(|i| format!("{i}\n")).collect();
    assert!(
        out == want,
        "lost or reordered output: {} bytes of {}",
        out.len(),
        want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_beyond_the_cap_is_dropped_and_flagged() {
    let s = Server::start_with(&["--max-stdout-kb", "1024"]);
    let id = s.create(json!({})).await;
    let r = s
        .exec(&id, "print('x' * (3 * 1024 * 1024))\nprint('after')")
        .await;
    assert_eq!(r["truncated"], true, "{}", r["truncated"]);
    let out = r["stdout"].as_str().unwrap();
    assert!(out.len() <= 1024 * 1024);
    assert!(
        out.starts_with("xxx") && out.ends_with("x\nafter\n"),
        "head and tail are kept"
    );
    assert!(out.contains("omitted"), "the cut is marked");
    assert!(
        r["dropped"]["stdout_bytes"].as_u64().unwrap() >= 2 * 1024 * 1024,
        "{}",
        r["dropped"]
    );
    let r = s.exec(&id, "print('next')").await;
    assert_eq!(r["stdout"], "next\n");
    assert_eq!(r["truncated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_updates_and_clear_output_follow_nbclient() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let code = "from IPython.display import display, clear_output\n\
                h = display('v1', display_id=True)\n\
                h.update('v2')";
    let r = s.exec(&id, code).await;
    let outs = r["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 1, "{r}");
    assert_eq!(outs[0]["data"]["text/plain"], "'v2'", "{r}");
    let r = s
        .exec(&id, "print('gone')\nclear_output()\nprint('kept')")
        .await;
    assert_eq!(r["stdout"], "kept\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_gets_only_its_own_environment() {
    std::env::set_var("CELLBLOCK_TEST_BROKER_SECRET", "must-not-leak");
    let s = Server::start();
    let id = s
        .create(json!({"env": {"AGENT_TOKEN": "given", "PATH_EXTRA": "1"}}))
        .await;
    let r = s
        .exec(&id, "import os\nprint(os.environ.get('AGENT_TOKEN'))\nprint(os.environ.get('CELLBLOCK_TEST_BROKER_SECRET'))\nprint(os.getcwd() == os.environ['HOME'])")
        .await;
    assert_eq!(r["stdout"], "given\nNone\nTrue\n", "{r}");
    let (_, v) = s
        .call(s.req(reqwest::Method::GET, &format!("/v1/sandboxes/{id}")))
        .await;
    assert_eq!(
        v["env_keys"],
        json!(["AGENT_TOKEN", "PATH_EXTRA"]),
        "values are never echoed: {v}"
    );
    assert!(!v.to_string().contains("given"));
}
