//! The example's `wvpc.test.yaml`, run as `wvpc test` runs it (the script against the mock of
//! `wvpc.mock.jsonc`), so that the cases file of the guide is checked on every build.

use wvpc_testing::{Script, report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cases_file_passes() {
    // Integration tests run in the package's directory, next to the files.
    let report = Script::from_config("wrangler.jsonc")
        .component(env!("WVPC_EXAMPLE_SCRIPT"))
        .mock_file("wvpc.mock.jsonc")
        .run_cases("wvpc.test.yaml")
        .await
        .expect("running wvpc.test.yaml");
    let tap = report::tap(&report);
    assert_eq!(report.cases.len(), 6, "{tap}");
    assert!(report.passed(), "{tap}");
}
