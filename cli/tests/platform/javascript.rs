//! A JavaScript script on the platform as processes: `wvpc deploy` builds `main:
//! "src/index.js"` into a component (as wrangler builds before it uploads), the directory
//! stores it, and a runtime process serves it by Host through its `vpc_services` binding.

use wvpc_tests::guests;

use super::{Platform, PrivateNetwork, connector, tunnel_and_service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wvpc_deploy_builds_a_javascript_main_and_a_runtime_serves_it() {
    if !guests::javascript_builds() {
        return;
    }
    let net = PrivateNetwork::start(&[("api.internal", "127.0.0.2")]).await;
    let platform = Platform::start().await;
    let local = platform.directory();
    let (office, service) = tunnel_and_service(&local, "office", "api", "api.internal", &net);
    let _office = connector(&platform, &office).await;

    let deployed = platform
        .deploy(&platform.token, "proxy-js", guests::PROXY_JS, service, "")
        .await
        .expect("deploying the JavaScript proxy");
    assert!(deployed.contains("built "), "{deployed}");
    assert!(
        deployed.contains("proxy-js.local.workers.localhost"),
        "{deployed}"
    );
    let reply = platform
        .until_built("proxy-js.local.workers.localhost", "/from-js?q=1", 200, "")
        .await;
    assert_eq!(reply.text(), "hello from origin: /from-js?q=1");

    // A syntax error fails the deploy with the file and line; the deployed version serves on.
    let broken = platform.state().join("broken.js");
    std::fs::write(&broken, "export default {\n  fetch( {\n};\n").unwrap();
    let refused = platform
        .deploy(
            &platform.token,
            "proxy-js",
            broken.to_str().unwrap(),
            service,
            "",
        )
        .await
        .expect_err("a script with a syntax error");
    assert!(refused.contains("broken.js:3:"), "{refused}");
    let reply = platform
        .until_built("proxy-js.local.workers.localhost", "/still", 200, "")
        .await;
    assert_eq!(reply.text(), "hello from origin: /still");
}
