//! The PostgreSQL backend against a real server: its change feed, calls from async code, and
//! what a client sees while the server is down and after it is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wvpc_directory::api::client::ApiClient;
use wvpc_directory::api::envelope::code;
use wvpc_directory::{Directory, Role};
use wvpc_pg_harness::PgServer;

fn open(url: &str) -> Directory {
    Directory::open_spec(Some(url), &std::env::temp_dir().join("wvpc-unused-state")).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_from_inside_an_async_task_does_not_panic() {
    let Some(server) = PgServer::shared() else {
        return;
    };
    let url = server.create_database();
    // Opening and writing straight from the task, on a current-thread runtime.
    let dir = open(&url);
    let (tunnel, _) = dir.create_tunnel("from-async").unwrap();
    assert_eq!(dir.tunnel(tunnel.id).unwrap().unwrap().name, "from-async");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_reaches_another_process_through_the_change_feed() {
    let Some(server) = PgServer::shared() else {
        return;
    };
    let url = server.create_database();
    let writer = Arc::new(open(&url));
    let reader = open(&url);
    let mut changes = reader.changes();
    // The first wake-up is the listener connecting (a full reload); wait for it.
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .unwrap();
    let mut figures = Vec::new();
    for i in 0..20 {
        let w = writer.clone();
        let started = Instant::now();
        let revision = tokio::task::spawn_blocking(move || {
            w.create_tunnel(&format!("t{i}")).unwrap();
            w.revision().unwrap()
        })
        .await
        .unwrap();
        let committed = started.elapsed();
        loop {
            let seen = tokio::time::timeout(Duration::from_secs(10), changes.changed())
                .await
                .expect("a notification within the hang guard");
            if seen.is_some_and(|r| r >= revision) {
                break;
            }
        }
        figures.push(started.elapsed().saturating_sub(committed));
        assert!(reader.revision().unwrap() >= revision);
    }
    figures.sort();
    eprintln!(
        "commit to notification: median {:?}, max {:?} (20 writes)",
        figures[figures.len() / 2],
        figures[figures.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_down_writes_fail_fast_with_503_and_succeed_again_after() {
    let server = match PgServer::start() {
        Ok(server) => server,
        Err(why) => {
            eprintln!("SKIPPED (PostgreSQL): {why}");
            return;
        }
    };
    let url = server.create_database();
    let dir = Arc::new(open(&url));
    let (_, admin) = dir.create_token("admin", Role::Admin, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api = tokio::spawn(wvpc_directory::api::serve(dir.clone(), listener));
    let client = ApiClient::new(&base, Some(admin)).unwrap();
    let tunnels = format!("/accounts/{}/cfd_tunnel", dir.account_id());
    let create = |name: &str| {
        let body = serde_json::json!({ "name": name }).to_string();
        let client = &client;
        let tunnels = tunnels.clone();
        async move {
            client
                .send(
                    http::Method::POST,
                    &tunnels,
                    Some(("application/json", bytes::Bytes::from(body))),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(create("before").await.status, 200);

    server.kill();
    let started = Instant::now();
    let refused = create("during").await;
    let took = started.elapsed();
    eprintln!("a write while PostgreSQL was down was refused after {took:?}");
    assert_eq!(refused.status, 503);
    let body = refused.json();
    let error = &body["errors"][0];
    assert_eq!(error["code"], code::UNAVAILABLE);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "directory unavailable: postgres {}:{}/",
            server.host(),
            server.port()
        )),
        "{message}"
    );
    // The same directly: the typed error says the store is unavailable.
    let err = dir.create_tunnel("direct").unwrap_err();
    assert!(err.is_unavailable(), "{err}");

    server.restart();
    // The pool replaces the connections the crash closed; the first tries may still meet one.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = create("after").await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 503, "{:?}", answer.json());
        assert!(
            Instant::now() < deadline,
            "no recovery: {:?}",
            answer.json()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names: Vec<String> = dir
        .list_tunnels()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["before", "after"]);
    api.abort();
}
