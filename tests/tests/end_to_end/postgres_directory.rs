//! The real path with the directory in PostgreSQL (`--directory postgres://…`): a script's
//! request reaches the origin through the connector, a change made by another process reaches
//! iris through the change feed, and while PostgreSQL is down the routes already loaded keep
//! serving while directory writes fail fast as unavailable.

use std::time::{Duration, Instant};

use wvpc_pg_harness::PgServer;
use wvpc_tests::origin::Origin;
use wvpc_tests::real::{ORIGIN_IP, RealWorld, WorldOptions};
use wvpc_tests::{client, trace_init, within};

async fn world_on(url: String) -> RealWorld {
    within(
        "starting the real path on PostgreSQL",
        RealWorld::start_with(WorldOptions {
            directory: Some(url),
            ..WorldOptions::default()
        }),
    )
    .await
    .unwrap()
}

async fn served(world: &RealWorld, path: &str) -> String {
    let reply = client::get(world.stack.script_addr, path).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_served_and_a_change_reaches_iris_through_the_change_feed() {
    trace_init();
    let Some(server) = PgServer::shared() else {
        return;
    };
    let world = world_on(server.create_database()).await;
    assert!(
        served(&world, "/first")
            .await
            .starts_with("hello from origin")
    );

    // Another process moves the service to a second origin.
    let second = Origin::start(ORIGIN_IP).await.unwrap();
    let writer = world.stack.directory.reopen().unwrap();
    let service = writer.list_services(None).unwrap().remove(0);
    let mut figures = Vec::new();
    for port in [
        second.addr.port(),
        world.origin.addr.port(),
        second.addr.port(),
    ] {
        let mut input = wvpc_directory::ServiceInput::http(
            "api",
            wvpc_directory::HostInput {
                hostname: Some(wvpc_tests::real::ORIGIN_NAME.into()),
                resolver_network: Some(wvpc_directory::ResolverNetworkInput {
                    virtual_network_id: None,
                    tunnel_id: Some(service.tunnel_id().to_string()),
                    resolver_ips: Some(vec![world.dns.addr.to_string()]),
                }),
                ..wvpc_directory::HostInput::default()
            },
        );
        input.http_port = Some(i64::from(port));
        let w = writer.reopen().unwrap();
        let id = service.service_id;
        tokio::task::spawn_blocking(move || w.replace_service(id, &input).unwrap())
            .await
            .unwrap();
        let committed = Instant::now();
        within("iris to load the change", world.stack.routes_current())
            .await
            .unwrap();
        figures.push(committed.elapsed());
    }
    eprintln!("commit to routes swapped in iris (PostgreSQL change feed): {figures:?}");
    served(&world, "/after-change").await;
    assert!(
        second.seen().iter().any(|s| s.path == "/after-change"),
        "the request went to the origin the service now names"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_loaded_routes_serve_and_writes_fail_fast() {
    trace_init();
    let server = match PgServer::start() {
        Ok(server) => server,
        Err(why) => {
            eprintln!("SKIPPED (PostgreSQL): {why}");
            return;
        }
    };
    let world = world_on(server.create_database()).await;
    served(&world, "/before").await;

    server.kill();
    // Routes and tunnel credentials are in memory: traffic goes on.
    for i in 0..5 {
        served(&world, &format!("/during/{i}")).await;
    }
    let directory = world.stack.directory.clone();
    let started = Instant::now();
    let err = tokio::task::spawn_blocking(move || directory.create_tunnel("during").unwrap_err())
        .await
        .unwrap();
    eprintln!(
        "a directory write with PostgreSQL down failed after {:?}: {err}",
        started.elapsed()
    );
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.to_string()
            .starts_with("directory unavailable: postgres "),
        "{err}"
    );

    server.restart();
    let directory = world.stack.directory.clone();
    let created = within("the directory to accept writes again", async move {
        loop {
            let d = directory.clone();
            match tokio::task::spawn_blocking(move || d.create_tunnel("after"))
                .await
                .unwrap()
            {
                Ok((tunnel, _)) => return tunnel,
                Err(err) => assert!(err.is_unavailable(), "{err}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(created.name, "after");
    served(&world, "/after").await;
}
