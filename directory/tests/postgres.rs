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
        loop {
            let seen = tokio::time::timeout(Duration::from_secs(10), changes.changed())
                .await
                .expect("a notification within the hang guard");
            if seen.is_some_and(|r| r >= revision) {
                break;
            }
        }
        figures.push(started.elapsed());
        assert!(reader.revision().unwrap() >= revision);
    }
    figures.sort();
    eprintln!(
        "write issued to its notification received: median {:?}, max {:?} (20 writes)",
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

/// A private CA (PEM file), and a server certificate for `localhost` signed by it.
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    fn other_ca(&self) -> std::path::PathBuf {
        self.dir.join("other-ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("wvpc-pg-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(name), cert.pem()).unwrap();
        Issuer::new(params, key)
    };
    let issuer = ca("ca.pem");
    ca("other-ca.pem");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // As root the harness runs PostgreSQL as `postgres`, which must own its key.
    if let Ok(out) = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()
        && out.status.success()
        && std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout
            == b"0\n"
    {
        let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        for file in ["server.crt", "server.key"] {
            std::os::unix::fs::chown(dir.join(file), Some(uid), None).unwrap();
        }
    }
    Pki { dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_verify_the_server_as_libpq_does() {
    let server = match PgServer::start() {
        Ok(server) => server,
        Err(why) => {
            eprintln!("SKIPPED (PostgreSQL): {why}");
            return;
        }
    };
    let pki = make_pki();
    let url = server.create_database();
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // One statement at a time: ALTER SYSTEM refuses a multi-statement (implicit) transaction.
    for setting in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            pki.dir.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            pki.dir.join("server.key").display()
        ),
        "ALTER SYSTEM SET ssl = on".to_owned(),
    ] {
        admin.batch_execute(&setting).await.unwrap();
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            break;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not turn TLS on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at =
        |host: &str, query: &str| url.replacen(&server.host().to_string(), host, 1) + "?" + query;
    let ca = pki.ca().display().to_string();
    let other = pki.other_ca().display().to_string();
    let open = |spec: String| {
        tokio::task::spawn_blocking(move || {
            Directory::open_spec(Some(&spec), std::path::Path::new("/nonexistent")).map(drop)
        })
    };
    // verify-full: the chain and the name (the certificate is for localhost).
    open(at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap()
    .unwrap();
    let err = open(at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // verify-ca: the chain only.
    open(at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await
    .unwrap()
    .unwrap();
    let err = open(at(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    ))
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // require without a CA: encrypted, not verified.
    open(at("127.0.0.1", "sslmode=require"))
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn processes_opening_a_new_database_at_once_agree_on_its_schema_and_account() {
    let Some(server) = PgServer::shared() else {
        return;
    };
    let url = server.create_database();
    let accounts: Vec<String> = std::thread::scope(|scope| {
        let opening: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| open(&url).account_id().to_owned()))
            .collect();
        opening.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(accounts.iter().all(|a| a == &accounts[0]), "{accounts:?}");
    assert_eq!(open(&url).list_accounts().unwrap().len(), 1);
}
