//! The directory API over real HTTP: a server on 127.0.0.1:0 and the crate's HTTP client.
//! Every endpoint, status, error code and validation rule a client can hit.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use wvpc_directory::api::client::ApiClient;
use wvpc_directory::api::envelope::code;
use wvpc_directory::{Directory, Role};

/// A state directory removed on drop.
struct TempState(PathBuf);

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running API server on a fresh directory, with an admin token.
struct Api {
    dir: Arc<Directory>,
    base: String,
    account: String,
    admin: String,
    _state: TempState,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A response: status and envelope.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn result(&self) -> &Value {
        assert_eq!(self.body["success"], true, "{:#}", self.body);
        &self.body["result"]
    }

    /// `(code, message)` of every error.
    fn errors(&self) -> Vec<(u64, String)> {
        assert_eq!(self.body["success"], false, "{:#}", self.body);
        assert!(self.body["result"].is_null());
        self.body["errors"]
            .as_array()
            .expect("errors array")
            .iter()
            .map(|e| {
                (
                    e["code"].as_u64().unwrap(),
                    e["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The only error's code and message.
    fn error(&self) -> (u64, String) {
        let errors = self.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap()
    }
}

impl Api {
    async fn start() -> Api {
        Self::start_with(wvpc_directory::SERVICE_LIMIT).await
    }

    async fn start_with(limit: usize) -> Api {
        let state =
            TempState(std::env::temp_dir().join(format!("wvpc-api-test-{}", Uuid::new_v4())));
        let dir = Arc::new(Directory::open(&state.0).unwrap().with_service_limit(limit));
        let (_, admin) = dir.create_token("admin", Role::Admin, None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(wvpc_directory::api::serve(dir.clone(), listener));
        Api {
            account: dir.account_id().to_owned(),
            dir,
            base,
            admin,
            _state: state,
            server,
        }
    }

    fn token(&self, role: Role, services: Option<Vec<Uuid>>) -> String {
        self.dir
            .create_token(&format!("{role}-token"), role, services)
            .unwrap()
            .1
    }

    async fn raw(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Answer {
        let client = ApiClient::new(&self.base, token.map(str::to_owned)).unwrap();
        let response = client.send(method, path, body).await.unwrap();
        assert_eq!(
            response.content_type.as_deref(),
            Some("application/json"),
            "{path}"
        );
        Answer {
            status: response.status.as_u16(),
            body: response.json(),
        }
    }

    async fn call(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
        self.raw(Some(token), method, path, body).await
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(&self.admin.clone(), method, path, body).await
    }

    fn services(&self) -> String {
        format!("/accounts/{}/connectivity/directory/services", self.account)
    }

    fn tunnels(&self) -> String {
        format!("/accounts/{}/cfd_tunnel", self.account)
    }

    fn scripts(&self) -> String {
        format!("/accounts/{}/workers/scripts", self.account)
    }

    async fn tunnel(&self, name: &str) -> String {
        let answer = self
            .admin(Method::POST, &self.tunnels(), Some(json!({ "name": name })))
            .await;
        answer.result()["id"].as_str().unwrap().to_owned()
    }

    async fn service(&self, name: &str, tunnel: &str) -> String {
        let answer = self
            .admin(
                Method::POST,
                &self.services(),
                Some(http_service(name, tunnel)),
            )
            .await;
        assert_eq!(answer.status, 200, "{:#}", answer.body);
        answer.result()["service_id"].as_str().unwrap().to_owned()
    }
}

fn http_service(name: &str, tunnel: &str) -> Value {
    json!({
        "name": name,
        "type": "http",
        "http_port": 8080,
        "host": { "hostname": "api.internal", "resolver_network": { "tunnel_id": tunnel } },
    })
}

// === authentication and accounts ===

#[tokio::test]
async fn requests_without_or_with_a_bad_token_get_401() {
    let api = Api::start().await;
    let none = api.raw(None, Method::GET, &api.services(), None).await;
    assert_eq!(none.status, 401);
    let (c, message) = none.error();
    assert_eq!(c, u64::from(code::AUTHENTICATION));
    assert!(
        message.contains("no API token") && message.contains("Authorization: Bearer"),
        "{message}"
    );

    let bad = api
        .raw(Some("wvpc_not-a-token"), Method::GET, &api.services(), None)
        .await;
    assert_eq!(bad.status, 401);
    assert!(bad.error().1.contains("not valid"), "{:?}", bad.error());

    // A revoked token stops working.
    let (token, secret) = api.dir.create_token("old", Role::Admin, None).unwrap();
    assert_eq!(
        api.call(&secret, Method::GET, &api.services(), None)
            .await
            .status,
        200
    );
    api.dir.delete_token(token.id).unwrap();
    assert_eq!(
        api.call(&secret, Method::GET, &api.services(), None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn a_missing_role_is_named_with_403() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let read = api.token(Role::Read, None);
    let bind = api.token(Role::Bind, None);
    // Read lists.
    assert_eq!(
        api.call(&read, Method::GET, &api.services(), None)
            .await
            .status,
        200
    );
    assert_eq!(
        api.call(&read, Method::GET, &api.tunnels(), None)
            .await
            .status,
        200
    );
    // Only admins change services and tunnels.
    for token in [&read, &bind] {
        let denied = api
            .call(
                token,
                Method::POST,
                &api.services(),
                Some(http_service("api", &tunnel)),
            )
            .await;
        assert_eq!(denied.status, 403);
        let (c, message) = denied.error();
        assert_eq!(c, u64::from(code::ROLE_MISSING));
        let role = if token == &read { "read" } else { "bind" };
        assert_eq!(
            message,
            format!(
                "creating a VPC service needs the admin role; the API token \"{role}-token\" has \
                 the {role} role (create a token with `wvpc token create --role admin`)"
            )
        );
        let denied = api
            .call(
                token,
                Method::POST,
                &api.tunnels(),
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(
            (denied.status, denied.error().0),
            (403, u64::from(code::ROLE_MISSING))
        );
    }
    let denied = api
        .call(
            &read,
            Method::GET,
            &format!("{}/{tunnel}/token", api.tunnels()),
            None,
        )
        .await;
    assert_eq!(denied.status, 403);
}

#[tokio::test]
async fn accounts_are_isolated() {
    let api = Api::start().await;
    let other = api.dir.create_account("other").unwrap();
    let other_dir = api.dir.for_account(&other.id).unwrap().unwrap();
    let (_, other_admin) = other_dir.create_token("theirs", Role::Admin, None).unwrap();

    // Our token on their account: 403 naming both accounts.
    let path = format!("/accounts/{}/connectivity/directory/services", other.id);
    let denied = api.admin(Method::GET, &path, None).await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.error(),
        (
            u64::from(code::WRONG_ACCOUNT),
            format!(
                "the API token \"admin\" belongs to account {}, not to account {}",
                api.account, other.id
            )
        )
    );
    // Their token works there, and sees only their account.
    assert_eq!(
        api.call(&other_admin, Method::GET, &path, None)
            .await
            .status,
        200
    );
    let accounts = api.call(&other_admin, Method::GET, "/accounts", None).await;
    assert_eq!(
        accounts.result(),
        &json!([{ "id": other.id, "name": "other", "created_on": other.created_at }])
    );

    // An account that does not exist: 404.
    let unknown = api
        .admin(
            Method::GET,
            "/accounts/00000000000000000000000000000000/cfd_tunnel",
            None,
        )
        .await;
    assert_eq!(unknown.status, 404);
    let (c, message) = unknown.error();
    assert_eq!(c, u64::from(code::UNKNOWN_OBJECT));
    assert!(
        message.starts_with("no account \"00000000000000000000000000000000\""),
        "{message}"
    );
}

#[tokio::test]
async fn the_calls_clients_make_first_are_served() {
    let api = Api::start().await;
    let verify = api.admin(Method::GET, "/user/tokens/verify", None).await;
    assert_eq!(verify.result()["status"], "active");
    let memberships = api.admin(Method::GET, "/memberships", None).await;
    assert_eq!(
        memberships.result()[0]["account"]["id"],
        api.account.as_str()
    );
    let accounts = api.admin(Method::GET, "/accounts", None).await;
    assert_eq!(accounts.result()[0]["id"], api.account.as_str());
    assert_eq!(accounts.body["result_info"]["total_count"], 1);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_404_and_405() {
    let api = Api::start().await;
    let nowhere = api.admin(Method::GET, "/zones", None).await;
    assert_eq!(
        (nowhere.status, nowhere.error().0),
        (404, u64::from(code::NO_ROUTE))
    );
    let nowhere = api
        .admin(
            Method::GET,
            &format!("/accounts/{}/nothing", api.account),
            None,
        )
        .await;
    assert_eq!(nowhere.status, 404);
    let client =
        ApiClient::new(&format!("{}/elsewhere", api.base), Some(api.admin.clone())).unwrap();
    assert_eq!(
        client.send(Method::GET, "/x", None).await.unwrap().status,
        404
    );
    let patch = api.admin(Method::PATCH, &api.services(), None).await;
    assert_eq!(patch.status, 405);
    assert_eq!(
        patch.error(),
        (
            u64::from(code::METHOD_NOT_ALLOWED),
            format!(
                "method PATCH is not allowed on /client/v4/accounts/{}/connectivity/directory/services; \
                 allowed: GET, POST",
                api.account
            )
        )
    );
    let bad_id = api
        .admin(Method::GET, &format!("{}/not-a-uuid", api.services()), None)
        .await;
    assert_eq!(
        (bad_id.status, bad_id.error().0),
        (404, u64::from(code::UNKNOWN_OBJECT))
    );
}

// === services ===

#[tokio::test]
async fn services_are_created_read_replaced_and_deleted() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let created = api
        .admin(
            Method::POST,
            &api.services(),
            Some(http_service("api", &tunnel)),
        )
        .await;
    assert_eq!(created.status, 200);
    let service = created.result().clone();
    let id = service["service_id"].as_str().unwrap().to_owned();
    assert_eq!(service["name"], "api");
    assert_eq!(service["type"], "http");
    assert_eq!(service["http_port"], 8080);
    assert_eq!(service["host"]["hostname"], "api.internal");
    assert_eq!(
        service["host"]["resolver_network"]["tunnel_id"],
        tunnel.as_str()
    );
    assert!(service["created_at"].is_string() && service["updated_at"].is_string());

    let path = format!("{}/{id}", api.services());
    assert_eq!(api.admin(Method::GET, &path, None).await.result(), &service);

    // PUT replaces everything: the type and the host variant may change.
    let replaced = api
        .admin(
            Method::PUT,
            &path,
            Some(json!({
                "name": "db",
                "type": "tcp",
                "tcp_port": 5432,
                "app_protocol": "postgresql",
                "host": { "ipv4": "10.0.0.5", "network": { "tunnel_id": tunnel } },
            })),
        )
        .await;
    let replaced = replaced.result().clone();
    assert_eq!(replaced["service_id"], id.as_str());
    assert_eq!(replaced["type"], "tcp");
    assert_eq!(replaced["tcp_port"], 5432);
    assert_eq!(replaced["host"]["ipv4"], "10.0.0.5");
    assert!(
        replaced.get("http_port").is_none_or(Value::is_null),
        "{replaced:#}"
    );
    assert_eq!(replaced["created_at"], service["created_at"]);
    // What GET returns can be PUT back unchanged (read-only keys are ignored).
    let again = api.admin(Method::PUT, &path, Some(replaced.clone())).await;
    assert_eq!(again.result()["name"], "db");

    let deleted = api.admin(Method::DELETE, &path, None).await;
    assert_eq!((deleted.status, deleted.result()), (200, &Value::Null));
    let gone = api.admin(Method::GET, &path, None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.error(),
        (
            u64::from(code::SERVICE_NOT_FOUND),
            format!("no VPC service {id} in this account")
        )
    );
    assert_eq!(api.admin(Method::DELETE, &path, None).await.status, 404);
    assert_eq!(
        api.admin(Method::PUT, &path, Some(http_service("x", &tunnel)))
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_under_another_connections_write_lock_are_503_unavailable_and_reads_go_on() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    api.service("before", &tunnel).await;
    // A backup, a slow migration or a stuck writer: another connection holds the write lock.
    let lock = rusqlite::Connection::open(api.dir.path()).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE; DELETE FROM runtime_nodes WHERE 0;")
        .unwrap();

    let started = std::time::Instant::now();
    let refused = api
        .admin(
            Method::POST,
            &api.services(),
            Some(http_service("during", &tunnel)),
        )
        .await;
    eprintln!(
        "a write under the lock was refused after {:?}",
        started.elapsed()
    );
    assert_eq!(refused.status, 503, "{:#}", refused.body);
    let (code, message) = refused.error();
    assert_eq!(code, u64::from(code::UNAVAILABLE));
    assert!(message.starts_with("directory busy: "), "{message}");
    assert!(message.contains("write lock"), "{message}");
    // Reads are served meanwhile.
    let listed = api.admin(Method::GET, &api.services(), None).await;
    assert_eq!(listed.result().as_array().unwrap().len(), 1);
    assert_eq!(
        api.admin(Method::GET, &api.tunnels(), None).await.status,
        200
    );

    lock.execute_batch("ROLLBACK;").unwrap();
    api.service("after", &tunnel).await;
    let listed = api.admin(Method::GET, &api.services(), None).await;
    assert_eq!(listed.result().as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn lists_are_paged_and_filtered_by_type() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(api.service(name, &tunnel).await);
    }
    let tcp = api
        .admin(
            Method::POST,
            &api.services(),
            Some(json!({
                "name": "db", "type": "tcp", "tcp_port": 5432,
                "host": { "hostname": "db.internal", "resolver_network": { "tunnel_id": tunnel } },
            })),
        )
        .await;
    let tcp_id = tcp.result()["service_id"].clone();

    let all = api.admin(Method::GET, &api.services(), None).await;
    assert_eq!(all.result().as_array().unwrap().len(), 4);
    assert_eq!(
        all.body["result_info"],
        json!({ "page": 1, "per_page": 20, "count": 4, "total_count": 4, "total_pages": 1 })
    );

    let page = |n: usize| format!("{}?page={n}&per_page=2&type=http", api.services());
    let first = api.admin(Method::GET, &page(1), None).await;
    let names: Vec<&str> = first
        .result()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        first.body["result_info"],
        json!({ "page": 1, "per_page": 2, "count": 2, "total_count": 3, "total_pages": 2 })
    );
    let second = api.admin(Method::GET, &page(2), None).await;
    assert_eq!(second.result()[0]["service_id"], ids[2].as_str());
    assert_eq!(second.body["result_info"]["count"], 1);
    let past = api.admin(Method::GET, &page(3), None).await;
    assert_eq!(past.result(), &json!([]));

    let only_tcp = api
        .admin(Method::GET, &format!("{}?type=tcp", api.services()), None)
        .await;
    assert_eq!(only_tcp.result().as_array().unwrap().len(), 1);
    assert_eq!(only_tcp.result()[0]["service_id"], tcp_id);

    for (query, message) in [
        ("type=udp", "type=\"udp\": expected \"http\" or \"tcp\""),
        (
            "per_page=0",
            "per_page=\"0\": expected a whole number from 1 to 1000",
        ),
        (
            "per_page=1001",
            "per_page=\"1001\": expected a whole number from 1 to 1000",
        ),
        (
            "page=x",
            &format!(
                "page=\"x\": expected a whole number from 1 to {}",
                usize::MAX
            ),
        ),
    ] {
        let bad = api
            .admin(Method::GET, &format!("{}?{query}", api.services()), None)
            .await;
        assert_eq!(bad.status, 400, "{query}");
        assert_eq!(
            bad.error(),
            (u64::from(code::INVALID_QUERY), message.to_owned())
        );
    }
}

#[tokio::test]
async fn every_validation_problem_is_reported_at_once_with_its_path() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let answer = api
        .admin(
            Method::POST,
            &api.services(),
            Some(json!({
                "name": " ",
                "type": "http",
                "http_port": 0,
                "https_port": 70000,
                "tcp_port": 0,
                "host": {
                    "hostname": "https://api.internal/x",
                    "resolver_network": {
                        "tunnel_id": Uuid::new_v4(),
                        "resolver_ips": ["10.0.0.300", "10.0.0.2:53"],
                    },
                },
                "tls_settings": { "cert_verification_mode": "sometimes" },
            })),
        )
        .await;
    assert_eq!(answer.status, 400);
    let errors = answer.errors();
    assert!(
        errors
            .iter()
            .all(|(c, _)| *c == u64::from(code::VALIDATION)),
        "{errors:?}"
    );
    let paths: Vec<&str> = errors
        .iter()
        .map(|(_, m)| m.split(": ").next().unwrap())
        .collect();
    for path in [
        "name",
        "http_port",
        "https_port",
        "tcp_port",
        "host.hostname",
        "host.resolver_network.tunnel_id",
        "host.resolver_network.resolver_ips[0]",
        "tls_settings.cert_verification_mode",
    ] {
        assert!(
            paths.contains(&path),
            "no problem reported for {path}: {errors:#?}"
        );
    }
    assert!(
        !paths.contains(&"host.resolver_network.resolver_ips[1]"),
        "{errors:#?}"
    );

    // Host variants are exclusive; tcp needs tcp_port; app_protocol only for tcp.
    let answer = api
        .admin(
            Method::POST,
            &api.services(),
            Some(json!({
                "name": "x",
                "type": "tcp",
                "app_protocol": "oracle",
                "host": {
                    "hostname": "db.internal",
                    "ipv4": "10.0.0.1",
                    "resolver_network": { "tunnel_id": tunnel },
                },
            })),
        )
        .await;
    let messages: Vec<String> = answer.errors().into_iter().map(|(_, m)| m).collect();
    assert!(
        messages.iter().any(|m| m.starts_with("tcp_port: ")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("app_protocol: ")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("host")),
        "{messages:#?}"
    );
    // Nothing was stored.
    assert_eq!(
        api.admin(Method::GET, &api.services(), None).await.result(),
        &json!([])
    );
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_their_status() {
    let api = Api::start().await;
    let json_body = |text: &str| Some(("application/json", Bytes::from(text.to_owned())));
    let broken = api
        .raw(
            Some(&api.admin),
            Method::POST,
            &api.services(),
            json_body("{\"name\":"),
        )
        .await;
    assert_eq!(
        (broken.status, broken.error().0),
        (400, u64::from(code::INVALID_JSON))
    );
    assert!(
        broken.error().1.starts_with("invalid JSON body: "),
        "{:?}",
        broken.error()
    );

    let typo = api
        .raw(
            Some(&api.admin),
            Method::POST,
            &api.services(),
            json_body(r#"{"name":"a","type":"http","host":{"hostname":"a","resolver_ip":[]}}"#),
        )
        .await;
    assert_eq!(typo.status, 400);
    assert!(typo.error().1.contains("resolver_ip"), "{:?}", typo.error());

    // Values of the wrong type: every one, with its path.
    let mistyped = api
        .admin(
            Method::POST,
            &api.services(),
            Some(json!({
                "name": 7,
                "type": "http",
                "http_port": "80",
                "https_port": 44.3,
                "host": { "hostname": ["a"], "resolver_network": { "tunnel_id": true, "resolver_ips": ["10.0.0.1", 53] } },
            })),
        )
        .await;
    assert_eq!(mistyped.status, 400);
    let messages: Vec<String> = mistyped
        .errors()
        .into_iter()
        .map(|(c, m)| {
            assert_eq!(c, u64::from(code::VALIDATION));
            m
        })
        .collect();
    assert_eq!(
        messages,
        [
            "name: expected a string, found a number",
            "http_port: expected a whole number, found a string",
            "https_port: expected a whole number, found a fraction",
            "host.hostname: expected a string, found an array",
            "host.resolver_network.tunnel_id: expected a string, found a boolean",
            "host.resolver_network.resolver_ips[1]: expected a string, found a number",
        ]
    );
    let not_object = api
        .admin(Method::POST, &api.services(), Some(json!([1])))
        .await;
    assert_eq!(
        not_object.error(),
        (
            u64::from(code::VALIDATION),
            "(body): expected an object, found an array".to_owned()
        )
    );

    let form = api
        .raw(
            Some(&api.admin),
            Method::POST,
            &api.services(),
            Some(("text/plain", Bytes::from_static(b"name=a"))),
        )
        .await;
    assert_eq!(
        (form.status, form.error().0),
        (415, u64::from(code::UNSUPPORTED_MEDIA_TYPE))
    );

    let huge = vec![b' '; wvpc_directory::api::MAX_JSON_BODY + 1];
    let too_large = api
        .raw(
            Some(&api.admin),
            Method::POST,
            &api.services(),
            Some(("application/json", Bytes::from(huge))),
        )
        .await;
    assert_eq!(
        (too_large.status, too_large.error().0),
        (413, u64::from(code::PAYLOAD_TOO_LARGE))
    );
}

#[tokio::test]
async fn the_service_limit_is_enforced_with_a_clear_error() {
    let api = Api::start_with(2).await;
    let tunnel = api.tunnel("office").await;
    api.service("a", &tunnel).await;
    let b = api.service("b", &tunnel).await;
    let third = api
        .admin(
            Method::POST,
            &api.services(),
            Some(http_service("c", &tunnel)),
        )
        .await;
    assert_eq!(third.status, 409);
    assert_eq!(
        third.error(),
        (
            u64::from(code::SERVICE_LIMIT),
            "this account already has 2 VPC services, the maximum; delete one first".to_owned()
        )
    );
    api.admin(Method::DELETE, &format!("{}/{b}", api.services()), None)
        .await
        .result();
    api.service("c", &tunnel).await;
}

// === tunnels ===

#[tokio::test]
async fn tunnels_are_created_with_credentials_listed_and_deleted() {
    let api = Api::start().await;
    let created = api
        .admin(
            Method::POST,
            &api.tunnels(),
            Some(json!({ "name": "office", "config_src": "local" })),
        )
        .await;
    let tunnel = created.result().clone();
    let id = tunnel["id"].as_str().unwrap().to_owned();
    assert_eq!(tunnel["name"], "office");
    assert_eq!(tunnel["account_tag"], api.account.as_str());
    assert_eq!(tunnel["credentials_file"]["TunnelID"], id.as_str());
    assert_eq!(
        tunnel["credentials_file"]["AccountTag"],
        api.account.as_str()
    );
    let token = tunnel["token"].as_str().unwrap();
    let credentials = wvpc_directory::Credentials::from_token(token).unwrap();
    assert_eq!(credentials.tunnel_id.to_string(), id);
    // The token authorizes a connector.
    api.dir
        .authorize_tunnel(
            credentials.tunnel_id,
            &api.account,
            &credentials.tunnel_secret,
        )
        .unwrap();

    let listed = api.admin(Method::GET, &api.tunnels(), None).await;
    assert_eq!(listed.result().as_array().unwrap().len(), 1);
    assert!(
        listed.result()[0].get("token").is_none()
            && listed.result()[0].get("credentials_file").is_none()
    );
    let one = api
        .admin(Method::GET, &format!("{}/{id}", api.tunnels()), None)
        .await;
    assert_eq!(one.result()["name"], "office");
    let again = api
        .admin(Method::GET, &format!("{}/{id}/token", api.tunnels()), None)
        .await;
    assert_eq!(again.result(), token);

    let taken = api
        .admin(
            Method::POST,
            &api.tunnels(),
            Some(json!({ "name": "office" })),
        )
        .await;
    assert_eq!(taken.status, 409);
    assert_eq!(
        taken.error(),
        (
            u64::from(code::TUNNEL_NAME_TAKEN),
            "a tunnel named \"office\" already exists in this account; pick another name"
                .to_owned()
        )
    );
    let blank = api
        .admin(Method::POST, &api.tunnels(), Some(json!({ "name": "" })))
        .await;
    assert_eq!(
        (blank.status, blank.error().0),
        (400, u64::from(code::INVALID_TUNNEL_NAME))
    );
    let unknown_key = api
        .admin(
            Method::POST,
            &api.tunnels(),
            Some(json!({ "name": "x", "tunnel_secret": "abc" })),
        )
        .await;
    assert_eq!(
        (unknown_key.status, unknown_key.error().0),
        (400, u64::from(code::INVALID_JSON))
    );

    // Refused while services use it, naming them.
    let service = api.service("api", &id).await;
    let refused = api
        .admin(Method::DELETE, &format!("{}/{id}", api.tunnels()), None)
        .await;
    assert_eq!(refused.status, 409);
    assert_eq!(
        refused.error(),
        (
            u64::from(code::TUNNEL_IN_USE),
            format!(
                "tunnel \"office\" ({id}) is used by 1 VPC service(s): \"api\" ({service}); delete \
                 them or point them at another tunnel first"
            )
        )
    );
    api.admin(
        Method::DELETE,
        &format!("{}/{service}", api.services()),
        None,
    )
    .await
    .result();
    let deleted = api
        .admin(Method::DELETE, &format!("{}/{id}", api.tunnels()), None)
        .await;
    assert_eq!(deleted.result()["id"], id.as_str());
    let gone = api
        .admin(Method::GET, &format!("{}/{id}", api.tunnels()), None)
        .await;
    assert_eq!(
        (gone.status, gone.error().0),
        (404, u64::from(code::TUNNEL_NOT_FOUND))
    );
}

// === scripts ===

/// A component exporting `export` and importing each of `imports` (empty instances).
fn component(export: &str, imports: &[&str]) -> Vec<u8> {
    let imports: String = imports
        .iter()
        .map(|name| format!("(import \"{name}\" (instance))\n"))
        .collect();
    wat::parse_str(format!(
        r#"(component
            {imports}
            (core module $m (func (export "handle")))
            (core instance $i (instantiate $m))
            (func $handle (canon lift (core func $i "handle")))
            (instance $handler (export "handle" (func $handle)))
            (export "{export}" (instance $handler)))"#
    ))
    .unwrap()
}

/// A servable component; `n` makes its bytes (and etag) distinct.
fn handler(n: u32) -> Vec<u8> {
    component(
        &format!("wasi:http/incoming-handler@0.2.{n}"),
        &["wasi:http/types@0.2.0", "wvpc:bindings/vpc@0.1.0"],
    )
}

fn upload(metadata: &Value, module: &[u8]) -> (String, Bytes) {
    let mut body = format!(
        "--B0undary\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{metadata}\r\n--B0undary\r\n\
         Content-Disposition: form-data; name=\"worker.wasm\"; filename=\"worker.wasm\"\r\n\
         Content-Type: application/wasm\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(module);
    body.extend_from_slice(b"\r\n--B0undary--\r\n");
    (
        "multipart/form-data; boundary=B0undary".to_owned(),
        Bytes::from(body),
    )
}

impl Api {
    async fn deploy(&self, token: &str, name: &str, bindings: Value) -> Answer {
        self.upload(
            token,
            name,
            json!({ "main_module": "worker.wasm", "bindings": bindings }),
            &handler(0),
        )
        .await
    }

    async fn upload(&self, token: &str, name: &str, metadata: Value, module: &[u8]) -> Answer {
        let (content_type, body) = upload(&metadata, module);
        self.raw(
            Some(token),
            Method::PUT,
            &format!("{}/{name}", self.scripts()),
            Some((&content_type, body)),
        )
        .await
    }

    /// The module the content endpoint serves.
    async fn content(&self, name: &str) -> Vec<u8> {
        let client = ApiClient::new(&self.base, Some(self.admin.clone())).unwrap();
        let content = client
            .send(
                Method::GET,
                &format!("{}/{name}/content", self.scripts()),
                None,
            )
            .await
            .unwrap();
        assert_eq!(content.status.as_u16(), 200);
        content.body.to_vec()
    }
}

#[tokio::test]
async fn scripts_are_uploaded_with_bindings_by_id_or_name_listed_and_deleted() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let api_id = api.service("api", &tunnel).await;
    let db_id = api.service("db", &tunnel).await;
    let bind = api.token(Role::Bind, None);
    let deployed = api
        .deploy(
            &bind,
            "proxy",
            json!([
                { "type": "vpc_service", "name": "API", "service_id": api_id },
                { "type": "vpc_service", "name": "DB", "service": "db" },
            ]),
        )
        .await;
    assert_eq!(deployed.status, 200, "{:#}", deployed.body);
    let mut script = deployed.result().clone();
    // The upload's answer names the version it deployed as Cloudflare does; the script
    // itself has no such field.
    assert_eq!(script["deployment_id"], script["version_id"]);
    script.as_object_mut().unwrap().remove("deployment_id");
    assert_eq!(script["id"], "proxy");
    assert_eq!(script["size"], handler(0).len());
    assert_eq!(script["version_number"], 1);
    assert_eq!(script["workers_dev"], true);
    assert_eq!(script["routes"], json!([]));
    assert_eq!(
        script["bindings"],
        json!([
            { "type": "vpc_service", "name": "API", "service_id": api_id },
            { "type": "vpc_service", "name": "DB", "service_id": db_id },
        ])
    );
    let read = api.token(Role::Read, None);
    let listed = api.call(&read, Method::GET, &api.scripts(), None).await;
    assert_eq!(listed.result(), &json!([script]));
    let got = api
        .call(
            &read,
            Method::GET,
            &format!("{}/proxy", api.scripts()),
            None,
        )
        .await;
    assert_eq!(got.result(), &script);
    let client = ApiClient::new(&api.base, Some(read.clone())).unwrap();
    let content = client
        .send(
            Method::GET,
            &format!("{}/proxy/content", api.scripts()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (content.status.as_u16(), &content.body[..]),
        (200, &handler(0)[..])
    );

    // A second upload replaces the first and keeps created_on.
    let redeployed = api.deploy(&bind, "proxy", json!([])).await;
    assert_eq!(redeployed.result()["bindings"], json!([]));
    assert_eq!(redeployed.result()["created_on"], script["created_on"]);

    let denied = api
        .call(
            &read,
            Method::DELETE,
            &format!("{}/proxy", api.scripts()),
            None,
        )
        .await;
    assert_eq!(denied.status, 403);
    api.call(
        &bind,
        Method::DELETE,
        &format!("{}/proxy", api.scripts()),
        None,
    )
    .await
    .result();
    let gone = api
        .call(
            &read,
            Method::GET,
            &format!("{}/proxy", api.scripts()),
            None,
        )
        .await;
    assert_eq!(
        gone.error(),
        (
            u64::from(code::SCRIPT_NOT_FOUND),
            "no script \"proxy\" in this account".to_owned()
        )
    );
}

#[tokio::test]
async fn deploy_refuses_each_bad_binding_with_the_binding_the_service_and_the_permission() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let api_id = api.service("api", &tunnel).await;
    let other_id = api.service("other", &tunnel).await;
    let twin_a = api.service("twin", &tunnel).await;
    let twin_b = api.service("twin", &tunnel).await;
    // A service of another account.
    let foreign_account = api.dir.create_account("foreign").unwrap();
    let foreign = api.dir.for_account(&foreign_account.id).unwrap().unwrap();
    let (foreign_tunnel, _) = foreign.create_tunnel("theirs").unwrap();
    let foreign_service = foreign
        .create_service(&wvpc_directory::ServiceInput::http(
            "theirs",
            wvpc_directory::HostInput::hostname("x.internal", foreign_tunnel.id),
        ))
        .unwrap();
    let missing = Uuid::new_v4();
    let account = &api.account;

    let bind = api.token(Role::Bind, None);
    let cases: Vec<(Value, u16, u32, String)> = vec![
        (
            json!({ "type": "vpc_service", "name": "API", "service_id": missing }),
            400,
            code::BINDING_UNKNOWN_SERVICE,
            format!(
                "binding \"API\": VPC service {missing} does not exist; create it first or fix the \
                 service_id (`wvpc service list` shows the account's services)"
            ),
        ),
        (
            json!({ "type": "vpc_service", "name": "API", "service_id": foreign_service.service_id }),
            403,
            code::BINDING_FOREIGN_SERVICE,
            format!(
                "binding \"API\": VPC service {} belongs to another account, not to account \
                 {account}; a script can bind only services of its own account",
                foreign_service.service_id
            ),
        ),
        (
            json!({ "type": "vpc_service", "name": "API", "service": "nope" }),
            400,
            code::BINDING_UNKNOWN_NAME,
            format!(
                "binding \"API\": no VPC service named \"nope\" in account {account} (`wvpc \
                 service list` shows the account's services)"
            ),
        ),
        (
            json!({ "type": "vpc_service", "name": "API", "service": "twin" }),
            400,
            code::BINDING_AMBIGUOUS_NAME,
            format!(
                "binding \"API\": 2 VPC services are named \"twin\" ({twin_a}, {twin_b}); bind by \
                 service_id instead"
            ),
        ),
    ];
    for (binding, status, c, message) in cases {
        let refused = api.deploy(&bind, "proxy", json!([binding])).await;
        assert_eq!(refused.status, status, "{binding}");
        assert_eq!(refused.error(), (u64::from(c), message));
    }

    // A bind token limited to one service may not bind another.
    let scoped = api.token(Role::Bind, Some(vec![api_id.parse().unwrap()]));
    let ok = api
        .deploy(
            &scoped,
            "proxy",
            json!([{ "type": "vpc_service", "name": "API", "service_id": api_id }]),
        )
        .await;
    assert_eq!(ok.status, 200, "{:#}", ok.body);
    let refused = api
        .deploy(
            &scoped,
            "proxy",
            json!([{ "type": "vpc_service", "name": "OTHER", "service": "other" }]),
        )
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.error(),
        (
            u64::from(code::BINDING_NOT_PERMITTED),
            format!(
                "binding \"OTHER\": the API token \"bind-token\" (role bind) may not bind VPC \
                 service {other_id} (\"other\"): missing permission bind on this service (its bind \
                 permission is limited to other services)"
            )
        )
    );
    // A read token may not deploy at all.
    let read = api.token(Role::Read, None);
    let refused = api.deploy(&read, "proxy", json!([])).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.error(),
        (
            u64::from(code::ROLE_MISSING),
            "deploying a script needs the bind role; the API token \"read-token\" has the read \
             role (create a token with `wvpc token create --role bind`)"
                .to_owned()
        )
    );

    // Every refusal of one upload at once; nothing stored.
    let refused = api
        .deploy(
            &bind,
            "proxy2",
            json!([
                { "type": "vpc_service", "name": "A", "service_id": missing },
                { "type": "vpc_service", "name": "B", "service": "nope" },
                { "type": "vpc_service", "name": "A", "service_id": api_id },
            ]),
        )
        .await;
    let codes: Vec<u64> = refused.errors().into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        codes,
        [
            code::BINDING_UNKNOWN_SERVICE,
            code::BINDING_UNKNOWN_NAME,
            code::BINDING_DUPLICATE
        ]
        .map(u64::from)
    );
    assert!(api.dir.script("proxy2").unwrap().is_none());
}

#[tokio::test]
async fn malformed_uploads_are_refused_with_every_problem() {
    let api = Api::start().await;
    let path = format!("{}/proxy", api.scripts());
    let admin = Some(api.admin.as_str());
    let json_upload = api
        .raw(
            admin,
            Method::PUT,
            &path,
            Some(("application/json", Bytes::from_static(b"{}"))),
        )
        .await;
    assert_eq!(
        (json_upload.status, json_upload.error().0),
        (415, u64::from(code::UNSUPPORTED_MEDIA_TYPE))
    );

    let (content_type, body) = upload(
        &json!({
            "main_module": "worker.wasm",
            "bindings": [
                { "type": "kv_namespace", "name": "KV" },
                { "type": "vpc_service", "name": "API" },
                { "type": "vpc_service", "name": "DB", "service_id": "abc", },
                { "type": "vpc_service", "service": "x", "service_id": Uuid::new_v4() },
            ],
        }),
        b"function() {}",
    );
    let refused = api
        .raw(admin, Method::PUT, &path, Some((&content_type, body)))
        .await;
    assert_eq!(refused.status, 400);
    let messages: Vec<String> = refused
        .errors()
        .into_iter()
        .map(|(c, m)| {
            assert_eq!(c, u64::from(code::INVALID_SCRIPT));
            m
        })
        .collect();
    assert_eq!(
        messages,
        [
            "metadata.bindings[0].type: binding type \"kv_namespace\" is not supported; use \"vpc_service\" or \"vpc_network\"",
            "metadata.bindings[1]: missing service_id (or service, the service's name)",
            "metadata.bindings[2].service_id: \"abc\" is not a UUID",
            "metadata.bindings[3].name: missing; the name the script uses, e.g. API",
            "metadata.bindings[3]: give either service_id or service (a name), not both",
            "part \"worker.wasm\": neither a WebAssembly component (it must start with \\0asm) nor a JavaScript module (Content-Type application/javascript+module); build the script first, or upload its bundled JavaScript",
        ]
    );

    let bad_name = api.deploy(&api.admin, "no/slash%20", json!([])).await;
    assert_eq!(bad_name.status, 404, "a slash is another path");
    let bad_name = api.deploy(&api.admin, "has%20space", json!([])).await;
    assert_eq!(bad_name.status, 400);
    assert_eq!(
        bad_name.error(),
        (
            u64::from(code::INVALID_SCRIPT),
            "invalid script name \"has space\": use 1 to 63 letters, digits, '-' or '_'".to_owned()
        )
    );
    let no_metadata = api
        .raw(
            admin,
            Method::PUT,
            &path,
            Some((
                "multipart/form-data; boundary=zz",
                Bytes::from_static(b"--zz--\r\n"),
            )),
        )
        .await;
    assert_eq!(
        no_metadata.error(),
        (
            u64::from(code::INVALID_SCRIPT),
            "the form has no \"metadata\" part".to_owned()
        )
    );
}

// === versions, rollback, delete ===

impl Api {
    fn script_path(&self, name: &str, rest: &str) -> String {
        format!("{}/{name}{rest}", self.scripts())
    }

    async fn rollback(&self, token: &str, name: &str, body: Value) -> Answer {
        self.call(
            token,
            Method::POST,
            &self.script_path(name, "/deployments"),
            Some(body),
        )
        .await
    }
}

#[tokio::test]
async fn every_upload_is_a_version_and_a_rollback_serves_an_earlier_one() {
    let api = Api::start().await;
    let bind = api.token(Role::Bind, None);
    let meta = json!({ "main_module": "worker.wasm" });
    let mut versions = Vec::new();
    for n in 0..3 {
        let answer = api.upload(&bind, "proxy", meta.clone(), &handler(n)).await;
        assert_eq!(answer.status, 200, "{:#}", answer.body);
        versions.push(answer.result().clone());
    }
    assert_eq!(versions[2]["version_number"], 3);
    assert_eq!(api.content("proxy").await, handler(2));

    let read = api.token(Role::Read, None);
    let listed = api
        .call(
            &read,
            Method::GET,
            &api.script_path("proxy", "/versions"),
            None,
        )
        .await;
    let listed = listed.result()["items"].as_array().unwrap().clone();
    assert_eq!(
        listed
            .iter()
            .map(|v| (
                v["number"].as_u64().unwrap(),
                v["active"].as_bool().unwrap(),
                v["author"].as_str().unwrap().to_owned()
            ))
            .collect::<Vec<_>>(),
        [
            (3, true, "bind-token".to_owned()),
            (2, false, "bind-token".to_owned()),
            (1, false, "bind-token".to_owned())
        ]
    );
    assert_eq!(listed[2]["id"], versions[0]["version_id"]);
    assert_eq!(listed[2]["etag"], versions[0]["etag"]);

    // Cloudflare's body: one version at 100%.
    let version_1 = versions[0]["version_id"].as_str().unwrap();
    let denied = api
        .rollback(
            &read,
            "proxy",
            json!({ "strategy": "percentage", "versions": [{ "version_id": version_1, "percentage": 100 }] }),
        )
        .await;
    assert_eq!(denied.status, 403);
    let rolled = api
        .rollback(
            &bind,
            "proxy",
            json!({ "strategy": "percentage", "versions": [{ "version_id": version_1, "percentage": 100 }] }),
        )
        .await;
    assert_eq!(rolled.status, 200, "{:#}", rolled.body);
    assert_eq!(rolled.result()["version"]["number"], 1);
    assert_eq!(rolled.result()["version"]["active"], true);
    assert_eq!(api.content("proxy").await, handler(0));
    let got = api
        .admin(Method::GET, &api.script_path("proxy", ""), None)
        .await;
    assert_eq!(got.result()["version_id"], version_1);
    assert_eq!(got.result()["etag"], versions[0]["etag"]);

    // Gradual deployments are refused, saying so.
    let version_2 = versions[1]["version_id"].as_str().unwrap();
    let split = api
        .rollback(
            &bind,
            "proxy",
            json!({ "strategy": "percentage", "versions": [
                { "version_id": version_1, "percentage": 50 },
                { "version_id": version_2, "percentage": 50 } ] }),
        )
        .await;
    assert_eq!(split.status, 400);
    assert_eq!(
        split.error(),
        (
            u64::from(code::UNSUPPORTED_DEPLOYMENT),
            "versions: 2 versions given; gradual deployments are not supported: give exactly one \
             version with percentage 100"
                .to_owned()
        )
    );
    let partial = api
        .rollback(
            &bind,
            "proxy",
            json!({ "versions": [{ "version_id": version_2, "percentage": 10 }] }),
        )
        .await;
    assert_eq!(
        partial.error(),
        (
            u64::from(code::UNSUPPORTED_DEPLOYMENT),
            "versions[0].percentage: 10 is not supported; gradual deployments are not supported: \
             the one version gets percentage 100"
                .to_owned()
        )
    );
    let unknown = Uuid::new_v4();
    let missing = api
        .rollback(
            &bind,
            "proxy",
            json!({ "versions": [{ "version_id": unknown, "percentage": 100 }] }),
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.error(),
        (
            u64::from(code::VERSION_NOT_FOUND),
            format!(
                "script \"proxy\" has no version {unknown}; `wvpc deployments list proxy` shows \
                 them"
            )
        )
    );
    assert_eq!(api.content("proxy").await, handler(0), "still version 1");

    // Delete: the summary, then nothing is left of it.
    let deleted = api
        .call(&bind, Method::DELETE, &api.script_path("proxy", ""), None)
        .await;
    assert_eq!(
        deleted.result(),
        &json!({ "id": "proxy", "versions": 3, "routes": [] })
    );
    for rest in ["", "/content", "/deployments"] {
        let gone = api
            .admin(Method::GET, &api.script_path("proxy", rest), None)
            .await;
        assert_eq!(
            (gone.status, gone.error().0),
            (404, u64::from(code::SCRIPT_NOT_FOUND)),
            "{rest}"
        );
    }
    assert!(api.dir.deployment_snapshot().unwrap().scripts.is_empty());
    assert_eq!(
        api.dir
            .module_by_etag(versions[0]["etag"].as_str().unwrap())
            .unwrap(),
        None,
        "unused modules are collected"
    );
}

#[tokio::test]
async fn a_module_that_is_no_servable_component_is_refused_and_the_old_version_stays() {
    let api = Api::start().await;
    let bind = api.token(Role::Bind, None);
    let meta = json!({ "main_module": "worker.wasm" });
    let good = api.upload(&bind, "proxy", meta.clone(), &handler(0)).await;
    assert_eq!(good.status, 200);
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            b"\0asm\x01\0\0\0".to_vec(),
            "the module is a core WebAssembly module, not a component; build the script as a \
             component with `cargo build --target wasm32-wasip2`"
                .into(),
        ),
        (
            component("wasi:cli/run@0.2.0", &[]),
            "the component does not export wasi:http/incoming-handler@0.2.x, the request handler \
             a runtime calls (it exports: wasi:cli/run@0.2.0); build it for the wasi:http/proxy \
             world, e.g. with the wvpc SDK"
                .into(),
        ),
        (
            component(
                "wasi:http/incoming-handler@0.2.0",
                &["wasi:io/streams@0.2.0", "acme:net/raw@1.0.0"],
            ),
            "the component imports \"acme:net/raw@1.0.0\", which no runtime provides; a script \
             may import only wasi:* interfaces and wvpc:bindings/* (its VPC service bindings)"
                .into(),
        ),
    ];
    for (module, message) in cases {
        let refused = api.upload(&bind, "proxy", meta.clone(), &module).await;
        assert_eq!(refused.status, 400, "{message}");
        assert_eq!(
            refused.error(),
            (u64::from(code::INVALID_COMPONENT), message)
        );
    }
    let mut truncated = handler(1);
    truncated.truncate(truncated.len() - 5);
    let refused = api.upload(&bind, "proxy", meta.clone(), &truncated).await;
    let (c, message) = refused.error();
    assert_eq!(c, u64::from(code::INVALID_COMPONENT));
    assert!(
        message.starts_with("the module is not a valid WebAssembly component: "),
        "{message}"
    );

    assert_eq!(api.content("proxy").await, handler(0));
    let versions = api.dir.script_versions("proxy").unwrap();
    assert_eq!(versions.len(), 1, "no version for a refused upload");
}

// === routes, workers_dev, limits ===

#[tokio::test]
async fn routes_and_limits_are_checked_with_their_field_paths() {
    let api = Api::start().await;
    let bind = api.token(Role::Bind, None);
    let refused = api
        .upload(
            &bind,
            "proxy",
            json!({
                "main_module": "worker.wasm",
                "routes": [
                    "api.example.com/*",
                    { "pattern": "https://api.example.com/v2/*", "zone_name": "example.com" },
                    "example.com:8443/*",
                    { "pattern": "shop.example.com/*", "custom_domain": true },
                ],
                "workers_dev": "yes",
                "limits": { "cpu_ms": 50, "subrequests": -1, "memory_mb": "128" },
            }),
            &handler(0),
        )
        .await;
    assert_eq!(refused.status, 400);
    let messages: Vec<String> = refused
        .errors()
        .into_iter()
        .map(|(c, m)| {
            assert_eq!(c, u64::from(code::INVALID_SCRIPT));
            m
        })
        .collect();
    assert_eq!(
        messages,
        [
            "metadata.routes[1].pattern: \"https://api.example.com/v2/*\" has a scheme (https://); \
             a route pattern is host/path without a scheme, e.g. \"api.example.com/*\"",
            "metadata.routes[2]: \"example.com:8443/*\" has a port; route patterns match the host \
             on any port, so leave the port out",
            "metadata.routes[3].pattern: \"shop.example.com/*\" is not a hostname; a custom domain \
             is a bare hostname (e.g. \"shop.example.com\") and serves every path of it",
            "metadata.workers_dev: expected true or false, found \"yes\"",
            "metadata.limits.memory_mb: expected a non-negative integer, found \"128\"",
            "metadata.limits.subrequests: expected a non-negative integer, found -1",
        ]
    );
    assert!(api.dir.script("proxy").unwrap().is_none());

    let ok = api
        .upload(
            &bind,
            "proxy",
            json!({
                "main_module": "worker.wasm",
                "routes": [
                    "API.example.com/*",
                    { "pattern": "*.example.com/v2/*", "zone_name": "example.com" },
                    { "pattern": "shop.example.com", "custom_domain": true },
                    "example.com",
                ],
                "workers_dev": false,
                "limits": { "cpu_ms": 50 },
            }),
            &handler(0),
        )
        .await;
    assert_eq!(ok.status, 200, "{:#}", ok.body);
    assert_eq!(
        ok.result()["routes"],
        json!([
            { "pattern": "api.example.com/*", "custom_domain": false },
            { "pattern": "*.example.com/v2/*", "zone_name": "example.com", "custom_domain": false },
            { "pattern": "shop.example.com/*", "custom_domain": true },
            { "pattern": "example.com/", "custom_domain": false },
        ])
    );
    assert_eq!(ok.result()["workers_dev"], false);
    assert_eq!(ok.result()["limits"], json!({ "cpu_ms": 50 }));
    let snapshot = api.dir.deployment_snapshot().unwrap();
    assert_eq!(
        snapshot.scripts[0].routes,
        [
            "api.example.com/*",
            "*.example.com/v2/*",
            "shop.example.com/*",
            "example.com/"
        ]
    );
    assert!(!snapshot.scripts[0].workers_dev);
    assert_eq!(snapshot.scripts[0].limits["cpu_ms"], 50);
}

#[tokio::test]
async fn a_route_held_by_another_script_is_refused_with_409() {
    let api = Api::start().await;
    let bind = api.token(Role::Bind, None);
    let with_routes = |routes: Value| json!({ "main_module": "worker.wasm", "routes": routes });
    let first = api
        .upload(
            &bind,
            "one",
            with_routes(json!(["api.example.com/*", "www.example.com/"])),
            &handler(0),
        )
        .await;
    assert_eq!(first.status, 200, "{:#}", first.body);

    // Same account: the holder is named.
    let clash = api
        .upload(
            &bind,
            "two",
            with_routes(json!(["new.example.com/*", "API.example.com/*"])),
            &handler(0),
        )
        .await;
    assert_eq!(clash.status, 409);
    assert_eq!(
        clash.error(),
        (
            u64::from(code::ROUTE_TAKEN),
            "metadata.routes[1].pattern: \"api.example.com/*\" is already routed to script \
             \"one\" of this account; remove it from that script's routes (or delete it) first"
                .to_owned()
        )
    );
    assert!(api.dir.script("two").unwrap().is_none());

    // Another account: only that it is another account's.
    let other = api.dir.create_account("other").unwrap();
    let other_dir = api.dir.for_account(&other.id).unwrap().unwrap();
    let (_, their_token) = other_dir.create_token("theirs", Role::Bind, None).unwrap();
    let (content_type, body) = upload(&with_routes(json!(["www.example.com/"])), &handler(0));
    let foreign = api
        .raw(
            Some(&their_token),
            Method::PUT,
            &format!("/accounts/{}/workers/scripts/one", other.id),
            Some((&content_type, body)),
        )
        .await;
    assert_eq!(foreign.status, 409);
    assert_eq!(
        foreign.error(),
        (
            u64::from(code::ROUTE_TAKEN),
            "metadata.routes[0].pattern: \"www.example.com/\" is already routed to a script of \
             another account; pick another pattern"
                .to_owned()
        )
    );

    // The holder redeploys with its routes; a rollback keeps them; a delete frees them.
    let again = api
        .upload(
            &bind,
            "one",
            with_routes(json!(["api.example.com/*"])),
            &handler(1),
        )
        .await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    let rolled = api
        .rollback(
            &bind,
            "one",
            json!({ "versions": [{ "version_id": first.result()["version_id"], "percentage": 100 }] }),
        )
        .await;
    assert_eq!(rolled.status, 200, "{:#}", rolled.body);
    let script = api
        .admin(Method::GET, &api.script_path("one", ""), None)
        .await;
    assert_eq!(script.result()["version_number"], 1);
    assert_eq!(
        script.result()["routes"],
        json!([{ "pattern": "api.example.com/*", "custom_domain": false }])
    );
    let deleted = api
        .call(&bind, Method::DELETE, &api.script_path("one", ""), None)
        .await;
    assert_eq!(deleted.result()["routes"], json!(["api.example.com/*"]));
    let now_free = api
        .upload(
            &bind,
            "two",
            with_routes(json!(["api.example.com/*"])),
            &handler(0),
        )
        .await;
    assert_eq!(now_free.status, 200, "{:#}", now_free.body);
}

// === subdomain ===

#[tokio::test]
async fn the_account_subdomain_is_read_and_set_in_cloudflares_shape() {
    let api = Api::start().await;
    let path = format!("/accounts/{}/workers/subdomain", api.account);
    let read = api.token(Role::Read, None);
    let got = api.call(&read, Method::GET, &path, None).await;
    assert_eq!(got.result(), &json!({ "subdomain": "local" }));

    let bind = api.token(Role::Bind, None);
    let denied = api
        .call(&bind, Method::PUT, &path, Some(json!({ "subdomain": "x" })))
        .await;
    assert_eq!(
        (denied.status, denied.error().0),
        (403, u64::from(code::ROLE_MISSING))
    );

    let set = api
        .admin(Method::PUT, &path, Some(json!({ "subdomain": "team-a" })))
        .await;
    assert_eq!(set.result(), &json!({ "subdomain": "team-a" }));
    assert_eq!(api.dir.subdomain().unwrap(), "team-a");

    let invalid = api
        .admin(Method::PUT, &path, Some(json!({ "subdomain": "Team_A" })))
        .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(
        invalid.error(),
        (
            u64::from(code::INVALID_SUBDOMAIN),
            "invalid subdomain \"Team_A\": contains 'T'; use only lowercase letters, digits and \
             '-' (e.g. \"team-a\")"
                .to_owned()
        )
    );
    let missing = api.admin(Method::PUT, &path, Some(json!({}))).await;
    assert_eq!(
        (missing.status, missing.error().0),
        (400, u64::from(code::INVALID_JSON))
    );

    api.dir
        .create_account_with_subdomain("b", Some("blue"))
        .unwrap();
    let taken = api
        .admin(Method::PUT, &path, Some(json!({ "subdomain": "blue" })))
        .await;
    assert_eq!(taken.status, 409);
    assert_eq!(
        taken.error(),
        (
            u64::from(code::SUBDOMAIN_TAKEN),
            "the subdomain \"blue\" is taken by another account; pick another".to_owned()
        )
    );
    assert_eq!(api.dir.subdomain().unwrap(), "team-a");
}

#[tokio::test]
async fn a_request_the_listener_refuses_gets_the_envelope_with_a_request_id() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let api = Api::start().await;
    let addr = api.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let fields: String = (0..1_001).map(|i| format!("x-field-{i}: 1\r\n")).collect();
    let request = format!(
        "GET /client/v4/user/tokens/verify HTTP/1.1\r\nhost: api\r\nauthorization: Bearer {}\r\n\
         {fields}\r\n",
        api.admin
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("wvpc-request-id: "))
        .expect("a request id header");
    let body: Value = serde_json::from_str(body).unwrap();
    let (code, message) = Answer { status: 431, body }.error();
    assert_eq!(code, u64::from(code::SERVER_LIMIT));
    assert!(
        message.starts_with("the request has more than 1000 header fields"),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("(request id {id})")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnels_live_connections_are_listed_from_the_cluster_registry_with_their_node() {
    use wvpc_directory::cluster::DEFAULT_LEASE_TTL;
    use wvpc_directory::{ClusterRegistry, LiveConnection};

    let mut api = Api::start().await;
    let (tunnel, _) = api.dir.create_tunnel("office").unwrap();
    let path = format!(
        "/accounts/{}/cfd_tunnel/{}/connections",
        api.account, tunnel.id
    );
    // A server that follows no registry says so.
    let answer = api.admin(Method::GET, &path, None).await;
    assert_eq!(answer.status, 503);
    let (code, message) = answer.error();
    assert_eq!(code, u64::from(code::UNAVAILABLE));
    assert!(message.contains("cluster registry"), "{message}");

    // The same state, served with the registry its iris nodes publish in.
    api.server.abort();
    let cluster = Arc::new(
        ClusterRegistry::sqlite(&api._state.0, DEFAULT_LEASE_TTL)
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    api.base = format!("http://{}", listener.local_addr().unwrap());
    api.server = tokio::spawn(wvpc_directory::api::serve_cluster(
        api.dir.clone(),
        Some(cluster.clone()),
        listener,
        wvpc_listener::ServerLimits::default(),
    ));
    let client_id = Uuid::new_v4();
    for (node, index) in [("iris-a", 0u8), ("iris-b", 1)] {
        let lease = cluster.join(node, None).await.unwrap();
        let connection = LiveConnection {
            connection_id: Uuid::new_v4(),
            tunnel_id: tunnel.id,
            client_id,
            version: "wvpc-connector/0.1.0".into(),
            arch: "linux_amd64".into(),
            conn_index: index,
            edge_node: String::new(),
            remote_addr: "10.1.2.3:51234".into(),
            since: LiveConnection::since_time(std::time::SystemTime::now()),
        };
        cluster.publish(&lease, &connection).await.unwrap();
    }
    let reader = api.token(Role::Read, None);
    let answer = api.call(&reader, Method::GET, &path, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let clients = answer.body["result"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "one connector");
    assert_eq!(clients[0]["id"], client_id.to_string());
    let nodes: Vec<&str> = clients[0]["conns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["colo_name"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["iris-a", "iris-b"]);

    let unknown = format!(
        "/accounts/{}/cfd_tunnel/{}/connections",
        api.account,
        Uuid::new_v4()
    );
    assert_eq!(api.admin(Method::GET, &unknown, None).await.status, 404);
}

// === virtual networks and routes (teamnet) ===

impl Api {
    fn vnets(&self) -> String {
        format!("/accounts/{}/teamnet/virtual_networks", self.account)
    }

    fn routes(&self) -> String {
        format!("/accounts/{}/teamnet/routes", self.account)
    }
}

#[tokio::test]
async fn virtual_networks_are_listed_created_updated_and_deleted_in_cloudflares_shape() {
    let api = Api::start().await;
    let listed = api.admin(Method::GET, &api.vnets(), None).await;
    let default = listed.result()[0].clone();
    assert_eq!(listed.result().as_array().unwrap().len(), 1);
    assert_eq!(default["name"], "default");
    assert_eq!(default["is_default_network"], true);
    assert_eq!(default["is_default"], true);
    assert!(default["deleted_at"].is_null());
    assert_eq!(listed.body["result_info"]["total_count"], 1);

    let lab = api
        .admin(
            Method::POST,
            &api.vnets(),
            Some(json!({ "name": "lab", "comment": "the lab", "is_default": true })),
        )
        .await;
    assert_eq!(lab.status, 200, "{:#}", lab.body);
    let lab = lab.result().clone();
    assert_eq!(
        (lab["is_default"].clone(), lab["comment"].clone()),
        (json!(true), json!("the lab"))
    );
    let default_id = default["id"].as_str().unwrap();
    let old = api
        .admin(Method::GET, &format!("{}/{default_id}", api.vnets()), None)
        .await;
    assert_eq!(old.result()["is_default_network"], false, "un-defaulted");

    let taken = api
        .admin(Method::POST, &api.vnets(), Some(json!({ "name": "lab" })))
        .await;
    assert_eq!(taken.status, 409);
    assert_eq!(taken.error().0, u64::from(code::VNET_NAME_TAKEN));
    let bad = api
        .admin(
            Method::POST,
            &api.vnets(),
            Some(json!({ "comment": "x", "nmae": "typo" })),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.error().1.contains("unknown field `nmae`"),
        "{:?}",
        bad.error()
    );
    let mistyped = api
        .admin(
            Method::POST,
            &api.vnets(),
            Some(json!({ "name": 5, "is_default": "yes" })),
        )
        .await;
    assert_eq!(
        mistyped.errors(),
        [
            (
                u64::from(code::VALIDATION),
                "name: expected a string, found a number".to_owned()
            ),
            (
                u64::from(code::VALIDATION),
                "is_default: expected true or false, found a string".to_owned()
            ),
        ]
    );
    let mistyped = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(json!({ "network": ["10.0.0.0/8"] })),
        )
        .await;
    assert_eq!(
        mistyped.error().1,
        "network: expected a string, found an array"
    );

    // PATCH: rename and make the first one default again; the lab can then go.
    let lab_path = format!("{}/{}", api.vnets(), lab["id"].as_str().unwrap());
    let refused = api.admin(Method::DELETE, &lab_path, None).await;
    assert_eq!(refused.status, 409);
    let (c, message) = refused.error();
    assert_eq!(c, u64::from(code::VNET_IN_USE));
    assert!(
        message.contains("default virtual network") && message.contains("--default"),
        "{message}"
    );
    let renamed = api
        .admin(
            Method::PATCH,
            &format!("{}/{default_id}", api.vnets()),
            Some(json!({ "name": "office", "is_default_network": true })),
        )
        .await;
    assert_eq!(renamed.result()["name"], "office");
    assert_eq!(renamed.result()["is_default"], true);
    let deleted = api.admin(Method::DELETE, &lab_path, None).await;
    assert_eq!(deleted.result()["name"], "lab");
    let gone = api.admin(Method::GET, &lab_path, None).await;
    assert_eq!(
        (gone.status, gone.error().0),
        (404, u64::from(code::VNET_NOT_FOUND))
    );

    // Reading needs the read role, writing the admin role.
    let read = api.token(Role::Read, None);
    assert_eq!(
        api.call(&read, Method::GET, &api.vnets(), None)
            .await
            .status,
        200
    );
    let denied = api
        .call(
            &read,
            Method::POST,
            &api.vnets(),
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(
        (denied.status, denied.error().0),
        (403, u64::from(code::ROLE_MISSING))
    );
}

#[tokio::test]
async fn routes_are_refused_with_the_field_and_what_to_do() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let made = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(json!({ "network": "10.0.0.0/24", "tunnel_id": tunnel, "comment": "office lan" })),
        )
        .await;
    assert_eq!(made.status, 200, "{:#}", made.body);
    let route = made.result().clone();
    assert_eq!(route["network"], "10.0.0.0/24");
    assert_eq!(route["tunnel_name"], "office");
    assert_eq!(route["comment"], "office lan");
    assert!(route["deleted_at"].is_null());
    let default = api.dir.default_virtual_network().unwrap();
    assert_eq!(route["virtual_network_id"], default.id.to_string());

    let host_bits = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(json!({ "network": "10.0.0.5/24", "tunnel_id": tunnel })),
        )
        .await;
    assert_eq!(host_bits.status, 400);
    assert_eq!(
        host_bits.error(),
        (
            u64::from(code::VALIDATION),
            "network: \"10.0.0.5/24\" has host bits set; use the network address \"10.0.0.0/24\""
                .to_owned()
        )
    );
    let twice = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(json!({ "network": "10.0.0.0/24", "tunnel_id": tunnel })),
        )
        .await;
    assert_eq!(twice.status, 409);
    let (c, message) = twice.error();
    assert_eq!(c, u64::from(code::ROUTE_EXISTS));
    assert!(
        message.contains(route["id"].as_str().unwrap()) && message.contains("\"office\""),
        "{message}"
    );
    let nested = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(json!({ "network": "10.0.0.128/25", "tunnel_id": tunnel })),
        )
        .await;
    assert_eq!(nested.status, 200, "nested prefixes are allowed");

    let several = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(json!({ "network": "10.0.0/24", "tunnel_id": "office", "virtual_network_id": Uuid::new_v4() })),
        )
        .await;
    assert_eq!(several.status, 400);
    let fields: Vec<String> = several
        .errors()
        .into_iter()
        .map(|(_, m)| m.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["network", "tunnel_id", "virtual_network_id"]);

    // Another account's tunnel is a permission refusal.
    let other = api.dir.create_account("other").unwrap();
    let (theirs, _) = api
        .dir
        .for_account(&other.id)
        .unwrap()
        .unwrap()
        .create_tunnel("t")
        .unwrap();
    let foreign = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(json!({ "network": "192.168.0.0/16", "tunnel_id": theirs.id })),
        )
        .await;
    assert_eq!(
        (foreign.status, foreign.error().0),
        (403, u64::from(code::FOREIGN_TUNNEL))
    );

    // Filters, PATCH, and a tunnel that routes use.
    let listed = api
        .admin(
            Method::GET,
            &format!("{}?tunnel_id={tunnel}", api.routes()),
            None,
        )
        .await;
    assert_eq!(listed.result().as_array().unwrap().len(), 2);
    let none = api
        .admin(
            Method::GET,
            &format!("{}?virtual_network_id={}", api.routes(), Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(none.result().as_array().unwrap().len(), 0);
    let bad_filter = api
        .admin(
            Method::GET,
            &format!("{}?tunnel_id=office", api.routes()),
            None,
        )
        .await;
    assert_eq!(
        (bad_filter.status, bad_filter.error().0),
        (400, u64::from(code::INVALID_QUERY))
    );
    let route_path = format!("{}/{}", api.routes(), route["id"].as_str().unwrap());
    let patched = api
        .admin(
            Method::PATCH,
            &route_path,
            Some(json!({ "comment": "renamed" })),
        )
        .await;
    assert_eq!(patched.result()["comment"], "renamed");
    let in_use = api
        .admin(Method::DELETE, &format!("{}/{tunnel}", api.tunnels()), None)
        .await;
    assert_eq!(in_use.status, 409);
    assert!(
        in_use.error().1.contains("10.0.0.0/24"),
        "{:?}",
        in_use.error()
    );
    assert_eq!(
        api.admin(Method::DELETE, &route_path, None).await.status,
        200
    );
    let gone = api.admin(Method::DELETE, &route_path, None).await;
    assert_eq!(
        (gone.status, gone.error().0),
        (404, u64::from(code::ROUTE_NOT_FOUND))
    );
}

#[tokio::test]
async fn network_bindings_are_checked_at_deploy_with_the_role_they_need() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let lab = api
        .admin(Method::POST, &api.vnets(), Some(json!({ "name": "lab" })))
        .await
        .result()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = api.admin.clone();
    let deployed = api
        .deploy(
            &admin,
            "net",
            json!([
                { "type": "vpc_network", "name": "OFFICE", "tunnel_id": tunnel },
                { "type": "vpc_network", "name": "ALL", "network_id": "cf1:network" },
                { "type": "vpc_network", "name": "LAB", "network_id": format!("cf1:vnet:{lab}") },
            ]),
        )
        .await;
    assert_eq!(deployed.status, 200, "{:#}", deployed.body);
    assert_eq!(
        deployed.result()["bindings"],
        json!([
            { "type": "vpc_network", "name": "OFFICE", "tunnel_id": tunnel },
            { "type": "vpc_network", "name": "ALL", "network_id": "cf1:network" },
            { "type": "vpc_network", "name": "LAB", "network_id": format!("cf1:vnet:{lab}") },
        ])
    );
    // The runtimes get them.
    let snapshot = api.dir.deployment_snapshot().unwrap();
    let targets: Vec<_> = snapshot.scripts[0]
        .bindings
        .iter()
        .map(|b| b.network_target().unwrap().to_string())
        .collect();
    assert_eq!(
        targets,
        [
            format!("tunnel:{tunnel}"),
            "cf1:network".into(),
            format!("cf1:vnet:{lab}")
        ]
    );

    // The lab is bound: it cannot go.
    let in_use = api
        .admin(Method::DELETE, &format!("{}/{lab}", api.vnets()), None)
        .await;
    assert!(
        in_use.error().1.contains("script(s) \"net\""),
        "{:?}",
        in_use.error()
    );

    // A bind token may bind networks, not a tunnel; refusals name the binding.
    let bind = api.token(Role::Bind, None);
    let by_tunnel = api
        .deploy(
            &bind,
            "t",
            json!([{ "type": "vpc_network", "name": "OFFICE", "tunnel_id": tunnel }]),
        )
        .await;
    assert_eq!(by_tunnel.status, 403);
    let (c, message) = by_tunnel.error();
    assert_eq!(c, u64::from(code::BINDING_NETWORK_NOT_PERMITTED));
    assert!(
        message.starts_with(
            "binding \"OFFICE\": a vpc_network binding by tunnel_id needs the admin role"
        ),
        "{message}"
    );
    let by_network = api
        .deploy(
            &bind,
            "n",
            json!([{ "type": "vpc_network", "name": "ALL", "network_id": "cf1:network" }]),
        )
        .await;
    assert_eq!(by_network.status, 200, "{:#}", by_network.body);

    let missing = Uuid::new_v4();
    let unknown = api
        .deploy(
            &admin,
            "u",
            json!([
                { "type": "vpc_network", "name": "A", "tunnel_id": missing },
                { "type": "vpc_network", "name": "B", "network_id": format!("cf1:vnet:{missing}") },
            ]),
        )
        .await;
    assert_eq!(unknown.status, 400);
    let codes: Vec<u64> = unknown.errors().into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        codes,
        [
            u64::from(code::BINDING_UNKNOWN_TUNNEL),
            u64::from(code::BINDING_UNKNOWN_NETWORK)
        ]
    );

    let malformed = api
        .deploy(
            &admin,
            "m",
            json!([
                { "type": "vpc_network", "name": "A", "tunnel_id": tunnel, "network_id": "cf1:network" },
                { "type": "vpc_network", "name": "B" },
                { "type": "vpc_network", "name": "C", "network_id": "cf1:vnet:lab" },
                { "type": "d1", "name": "D" },
            ]),
        )
        .await;
    assert_eq!(malformed.status, 400);
    let messages: Vec<String> = malformed.errors().into_iter().map(|(_, m)| m).collect();
    assert!(
        messages[0].starts_with("metadata.bindings[0]: give either tunnel_id or network_id"),
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("metadata.bindings[1]: missing tunnel_id or network_id"),
        "{messages:?}"
    );
    assert!(
        messages[2].starts_with("metadata.bindings[2].network_id: \"cf1:vnet:lab\""),
        "{messages:?}"
    );
    assert!(
        messages[3].starts_with("metadata.bindings[3].type: binding type \"d1\" is not supported"),
        "{messages:?}"
    );

    // Another account's tunnel and virtual network are permission refusals.
    let other = api.dir.create_account("other").unwrap();
    let theirs = api.dir.for_account(&other.id).unwrap().unwrap();
    let (their_tunnel, _) = theirs.create_tunnel("t").unwrap();
    let their_vnet = theirs.default_virtual_network().unwrap();
    let foreign = api
        .deploy(
            &admin,
            "f",
            json!([
                { "type": "vpc_network", "name": "A", "tunnel_id": their_tunnel.id },
                { "type": "vpc_network", "name": "B", "network_id": format!("cf1:vnet:{}", their_vnet.id) },
            ]),
        )
        .await;
    assert_eq!(foreign.status, 403);
    assert!(
        foreign
            .errors()
            .iter()
            .all(|(c, m)| *c == u64::from(code::BINDING_FOREIGN_NETWORK)
                && m.contains("belongs to another account"))
    );
}

#[tokio::test]
async fn services_take_a_tcp_port_an_app_protocol_and_a_virtual_network() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    for protocol in ["postgresql", "mysql"] {
        let db = api
            .admin(
                Method::POST,
                &api.services(),
                Some(json!({
                    "name": protocol,
                    "type": "tcp",
                    "tcp_port": 5432,
                    "app_protocol": protocol,
                    "host": { "hostname": "db.internal", "resolver_network": { "tunnel_id": tunnel } },
                })),
            )
            .await;
        assert_eq!(db.status, 200, "{:#}", db.body);
        assert_eq!(db.result()["app_protocol"], protocol);
        assert_eq!(db.result()["tcp_port"], 5432);
    }

    // An http service may have a tcp_port (what connect() dials); it is shown only when set.
    let web = api
        .admin(
            Method::POST,
            &api.services(),
            Some(json!({
                "name": "web", "type": "http", "tcp_port": 2222,
                "host": { "hostname": "web.internal", "resolver_network": { "tunnel_id": tunnel } },
            })),
        )
        .await;
    assert_eq!(
        (
            web.result()["tcp_port"].clone(),
            web.result()["http_port"].clone()
        ),
        (json!(2222), json!(80))
    );
    let plain = api.service("plain", &tunnel).await;
    let plain = api
        .admin(Method::GET, &format!("{}/{plain}", api.services()), None)
        .await;
    assert!(plain.result().get("tcp_port").is_none(), "{:#}", plain.body);

    // host.network.virtual_network_id: a virtual network of the account that routes the IP.
    let lab = api
        .admin(Method::POST, &api.vnets(), Some(json!({ "name": "lab" })))
        .await
        .result()["id"]
        .clone();
    let ip_service = json!({
        "name": "db", "type": "tcp", "tcp_port": 3306, "app_protocol": "mysql",
        "host": { "ipv4": "10.1.2.3", "network": { "tunnel_id": tunnel, "virtual_network_id": lab } },
    });
    let unrouted = api
        .admin(Method::POST, &api.services(), Some(ip_service.clone()))
        .await;
    assert_eq!(unrouted.status, 400);
    let (c, message) = unrouted.error();
    assert_eq!(c, u64::from(code::VALIDATION));
    assert!(
        message.starts_with("host.network.virtual_network_id: tunnel")
            && message.contains("covering 10.1.2.3"),
        "{message}"
    );
    let route = api
        .admin(
            Method::POST,
            &api.routes(),
            Some(
                json!({ "network": "10.1.0.0/16", "tunnel_id": tunnel, "virtual_network_id": lab }),
            ),
        )
        .await;
    assert_eq!(route.status, 200, "{:#}", route.body);
    let routed = api
        .admin(Method::POST, &api.services(), Some(ip_service))
        .await;
    assert_eq!(routed.status, 200, "{:#}", routed.body);
    assert_eq!(
        routed.result()["host"]["network"]["virtual_network_id"],
        lab
    );
    let typed = api
        .admin(
            Method::POST,
            &api.services(),
            Some(json!({
                "name": "x", "type": "http",
                "host": { "hostname": "x.internal", "resolver_network": { "tunnel_id": tunnel, "virtual_network_id": 7 } },
            })),
        )
        .await;
    assert_eq!(
        typed.error().1,
        "host.resolver_network.virtual_network_id: expected a string, found a number"
    );
}

// === what `wrangler deploy` calls ===

/// The JavaScript build cache the js-build tests share: `$WVPC_JS_CACHE_DIR`, else
/// `<target>/wvpc-js`.
fn js_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WVPC_JS_CACHE_DIR") {
        return dir.into();
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.parent().unwrap().join("target"))
        .join("wvpc-js")
}

/// A server that builds JavaScript uploads, or `None` (printing why) without Node.js.
async fn js_api() -> Option<Api> {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED (node): Node.js is not installed; JavaScript uploads cannot be built");
        return None;
    }
    Some(api_building_with(wvpc_js_build::JsBuilder::new(js_cache_dir())).await)
}

/// A server that builds JavaScript uploads with `builder`.
async fn api_building_with(builder: wvpc_js_build::JsBuilder) -> Api {
    let mut api = Api::start().await;
    api.server.abort();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    api.base = format!("http://{}", listener.local_addr().unwrap());
    api.server = tokio::spawn(wvpc_directory::api::serve_cluster_js(
        api.dir.clone(),
        None,
        listener,
        wvpc_listener::ServerLimits::default(),
        builder,
    ));
    api
}

/// One module part of a form: name, content type, bytes.
type Part<'a> = (&'a str, &'a str, &'a [u8]);

/// A form as wrangler sends it: `metadata`, then each part.
fn form(metadata: &Value, parts: &[Part<'_>]) -> (String, Bytes) {
    let mut body = format!(
        "--B0undary\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{metadata}\r\n"
    )
    .into_bytes();
    for (name, content_type, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--B0undary\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--B0undary--\r\n");
    (
        "multipart/form-data; boundary=B0undary".to_owned(),
        Bytes::from(body),
    )
}

impl Api {
    async fn send_form(
        &self,
        method: Method,
        path: &str,
        metadata: Value,
        parts: &[Part<'_>],
    ) -> Answer {
        let (content_type, body) = form(&metadata, parts);
        self.raw(
            Some(&self.admin.clone()),
            method,
            path,
            Some((&content_type, body)),
        )
        .await
    }
}

const JS: &str = "application/javascript+module";

#[tokio::test]
async fn wranglers_calls_for_a_new_then_an_existing_script_are_answered_in_cloudflares_shape() {
    let api = Api::start().await;
    let tunnel = api.tunnel("office").await;
    let service = api.service("api", &tunnel).await;
    let services = format!("/accounts/{}/workers/services", api.account);
    let bindings = json!([{ "type": "vpc_service", "name": "API", "service_id": service }]);

    // A new script: wrangler reads 10007 as "not deployed yet" and uploads it.
    for path in [
        format!("{services}/hello"),
        api.script_path("hello", "/deployments"),
    ] {
        let unknown = api.admin(Method::GET, &path, None).await;
        assert_eq!(
            (unknown.status, unknown.error().0),
            (404, 10007),
            "{path}: {:#}",
            unknown.body
        );
    }
    let first = api
        .upload(
            &api.admin.clone(),
            "hello",
            json!({ "main_module": "worker.wasm", "bindings": bindings,
                    "compatibility_date": "2025-01-01", "compatibility_flags": [] }),
            &handler(0),
        )
        .await;
    assert_eq!(first.status, 200, "{:#}", first.body);
    let first_version = first.result()["version_id"].clone();
    assert_eq!(first.result()["deployment_id"], first_version);

    // Now it exists: the service, its deployment and its settings.
    let found = api
        .admin(Method::GET, &format!("{services}/hello"), None)
        .await;
    let script = &found.result()["default_environment"]["script"];
    assert_eq!(script["id"], "hello");
    assert_eq!(script["etag"], first.result()["etag"]);
    assert_eq!(
        found.result()["default_environment"]["environment"],
        "production"
    );
    let deployments = api
        .admin(Method::GET, &api.script_path("hello", "/deployments"), None)
        .await;
    assert_eq!(
        deployments.result()["deployments"][0]["versions"],
        json!([{ "version_id": first_version, "percentage": 100 }])
    );
    let settings = api
        .admin(Method::GET, &api.script_path("hello", "/settings"), None)
        .await;
    assert_eq!(settings.result()["bindings"][0]["service_id"], service);

    // A redeploy: a version uploaded without being served, then deployed.
    let uploaded = api
        .send_form(
            Method::POST,
            &api.script_path("hello", "/versions"),
            json!({ "main_module": "worker.wasm", "bindings": bindings }),
            &[("worker.wasm", "application/wasm", &handler(1))],
        )
        .await;
    assert_eq!(uploaded.status, 200, "{:#}", uploaded.body);
    let second = uploaded.result()["id"].clone();
    assert_eq!(uploaded.result()["number"], 2);
    assert_eq!(uploaded.result()["active"], false);
    assert!(uploaded.result()["resources"]["script"]["etag"].is_string());
    assert_eq!(api.content("hello").await, handler(0), "not served yet");
    let deployed = api
        .rollback(
            &api.admin.clone(),
            "hello",
            json!({ "strategy": "percentage", "versions": [{ "version_id": second, "percentage": 100 }],
                    "annotations": { "workers/message": "from wrangler" } }),
        )
        .await;
    assert_eq!(deployed.status, 200, "{:#}", deployed.body);
    assert_eq!(api.content("hello").await, handler(1));
    let versions = api
        .admin(Method::GET, &api.script_path("hello", "/versions"), None)
        .await;
    let items = versions.result()["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (&items[0]["id"], &items[0]["active"]),
        (&second, &json!(true))
    );
    let one = api
        .admin(
            Method::GET,
            &api.script_path("hello", &format!("/versions/{}", second.as_str().unwrap())),
            None,
        )
        .await;
    assert_eq!(one.result()["number"], 2);
    assert_eq!(one.result()["metadata"]["source"], "api");
    let missing = api
        .admin(
            Method::GET,
            &api.script_path("hello", &format!("/versions/{}", Uuid::new_v4())),
            None,
        )
        .await;
    assert_eq!(
        (missing.status, missing.error().0),
        (404, u64::from(code::VERSION_NOT_FOUND))
    );

    // The settings wrangler patches after a version deploy: only their "off" values.
    let patched = api
        .admin(
            Method::PATCH,
            &api.script_path("hello", "/script-settings"),
            Some(json!({ "observability": { "enabled": false }, "tags": [] })),
        )
        .await;
    assert_eq!(
        patched.result()["observability"],
        json!({ "enabled": false })
    );
    let refused = api
        .admin(
            Method::PATCH,
            &api.script_path("hello", "/script-settings"),
            Some(json!({ "logpush": true, "tags": ["team=a"] })),
        )
        .await;
    assert_eq!(refused.status, 400);
    let errors = refused.errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|(c, _)| *c == u64::from(code::UNSUPPORTED_SETTING))
    );
    assert!(
        errors[0].1.starts_with("logpush: true is not supported"),
        "{errors:?}"
    );
    assert!(errors[1].1.starts_with("tags: "), "{errors:?}");

    // workers.dev: on by default, switched off and on; preview URLs do not exist here.
    let subdomain = api.script_path("hello", "/subdomain");
    let before = api.admin(Method::GET, &subdomain, None).await;
    assert_eq!(
        before.result(),
        &json!({ "enabled": true, "previews_enabled": false })
    );
    let off = api
        .admin(Method::POST, &subdomain, Some(json!({ "enabled": false })))
        .await;
    assert_eq!(off.result()["enabled"], false);
    let script = api
        .admin(Method::GET, &api.script_path("hello", ""), None)
        .await;
    assert_eq!(script.result()["workers_dev"], false);
    let previews = api
        .admin(
            Method::POST,
            &subdomain,
            Some(json!({ "enabled": true, "previews_enabled": true })),
        )
        .await;
    assert_eq!(previews.status, 400);
    assert!(
        previews
            .error()
            .1
            .starts_with("previews_enabled: preview URLs are not supported")
    );
    let read = api.token(Role::Read, None);
    let denied = api
        .call(
            &read,
            Method::POST,
            &subdomain,
            Some(json!({ "enabled": true })),
        )
        .await;
    assert_eq!(
        (denied.status, denied.error().0),
        (403, u64::from(code::ROLE_MISSING))
    );
    let script = api
        .admin(Method::GET, &api.script_path("hello", ""), None)
        .await;
    assert_eq!(script.result()["workers_dev"], false, "nothing changed");

    // Routes: replaced as a whole, each problem with its path.
    let routes = api.script_path("hello", "/routes");
    let set = api
        .admin(
            Method::PUT,
            &routes,
            Some(json!([{ "pattern": "hello.example.com/*" }, { "pattern": "api.example.com/v1/*", "zone_name": "example.com" }])),
        )
        .await;
    assert_eq!(
        set.result(),
        &json!([
            { "pattern": "hello.example.com/*", "script": "hello" },
            { "pattern": "api.example.com/v1/*", "script": "hello", "zone_name": "example.com" }
        ])
    );
    let script = api
        .admin(Method::GET, &api.script_path("hello", ""), None)
        .await;
    assert_eq!(script.result()["routes"].as_array().unwrap().len(), 2);
    let bad = api
        .admin(
            Method::PUT,
            &routes,
            Some(json!([{ "pattern": "https://x.example.com/*" }])),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.error().1.starts_with("routes[0].pattern: "),
        "{:?}",
        bad.error()
    );
    api.upload(
        &api.admin.clone(),
        "other",
        json!({ "main_module": "worker.wasm", "routes": ["taken.example.com/*"] }),
        &handler(3),
    )
    .await
    .result();
    let taken = api
        .admin(
            Method::PUT,
            &routes,
            Some(json!(["hello.example.com/*", "taken.example.com/*"])),
        )
        .await;
    assert_eq!(
        (taken.status, taken.error().0),
        (409, u64::from(code::ROUTE_TAKEN))
    );
    assert!(
        taken.error().1.starts_with(
            "routes[1].pattern: \"taken.example.com/*\" is already routed to script \"other\""
        ),
        "{:?}",
        taken.error()
    );
    let listed = api.admin(Method::GET, &routes, None).await;
    assert_eq!(listed.result().as_array().unwrap().len(), 2, "unchanged");

    // wrangler's zone lookup is told what to do instead.
    let zones = api
        .admin(Method::GET, "/zones?name=hello.example.com", None)
        .await;
    let (code, message) = zones.error();
    assert_eq!((zones.status, code), (404, u64::from(code::NO_ROUTE)));
    assert!(
        message.contains("set \"workers_dev\": true beside \"routes\""),
        "{message}"
    );

    // Every one of these names an unknown script with 10007.
    for (method, rest, body) in [
        (Method::GET, "/subdomain", None),
        (Method::POST, "/subdomain", Some(json!({ "enabled": true }))),
        (Method::GET, "/routes", None),
        (Method::PUT, "/routes", Some(json!([]))),
        (Method::GET, "/settings", None),
        (Method::PATCH, "/script-settings", Some(json!({}))),
        (Method::GET, "/versions", None),
    ] {
        let unknown = api
            .admin(method.clone(), &api.script_path("nope", rest), body)
            .await;
        assert_eq!(
            (unknown.status, unknown.error().0),
            (404, u64::from(code::SCRIPT_NOT_FOUND)),
            "{method} {rest}"
        );
    }
    let unknown = api
        .send_form(
            Method::POST,
            &api.script_path("nope", "/versions"),
            json!({ "main_module": "worker.wasm" }),
            &[("worker.wasm", "application/wasm", &handler(2))],
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.error().0),
        (404, u64::from(code::SCRIPT_NOT_FOUND)),
        "a version is uploaded to a script that exists"
    );
}

#[tokio::test]
async fn javascript_uploads_with_bad_metadata_are_refused_before_any_build() {
    let api = Api::start().await;
    let js = b"export default { fetch() { return new Response('hi'); } };";
    let cases: [(Value, Vec<Part<'_>>, &str); 4] = [
        (
            json!({ "main_module": "index.js", "bindings": [{ "type": "kv_namespace", "name": "KV" }] }),
            vec![("index.js", JS, js)],
            "metadata.bindings[0].type: binding type \"kv_namespace\" is not supported",
        ),
        (
            json!({ "main_module": "main.js" }),
            vec![("index.js", JS, js)],
            "metadata.main_module: the form has no part named \"main.js\"",
        ),
        (
            json!({ "body_part": "index.js" }),
            vec![("index.js", "application/javascript", js)],
            "metadata.body_part: the service-worker format is not supported",
        ),
        (
            json!({ "main_module": "index.txt" }),
            vec![("index.txt", "text/plain", b"hello")],
            "part \"index.txt\": neither a WebAssembly component",
        ),
    ];
    for (metadata, parts, expected) in cases {
        let answer = api
            .send_form(Method::PUT, &api.script_path("hello", ""), metadata, &parts)
            .await;
        assert_eq!(answer.status, 400, "{:#}", answer.body);
        let errors = answer.errors();
        assert!(
            errors
                .iter()
                .any(|(c, m)| *c == u64::from(code::INVALID_SCRIPT) && m.starts_with(expected)),
            "{expected}: {errors:?}"
        );
    }
    let none = api
        .admin(Method::GET, &api.script_path("hello", ""), None)
        .await;
    assert_eq!(none.status, 404, "nothing was stored");
}

#[tokio::test]
async fn a_javascript_upload_is_built_into_a_component_and_a_syntax_error_is_a_400_naming_the_line()
{
    let Some(api) = js_api().await else { return };
    let tunnel = api.tunnel("office").await;
    let service = api.service("api", &tunnel).await;
    let bindings = json!([{ "type": "vpc_service", "name": "API", "service_id": service }]);

    let broken = b"export default {\n  async fetch(request, env) {\n    return new Response(\"x\";\n  },\n};\n";
    let refused = api
        .send_form(
            Method::PUT,
            &api.script_path("hello", ""),
            json!({ "main_module": "index.js", "bindings": bindings }),
            &[("index.js", JS, broken)],
        )
        .await;
    assert_eq!(refused.status, 400, "{:#}", refused.body);
    let (code, message) = refused.error();
    assert_eq!(code, u64::from(code::SCRIPT_BUILD_FAILED));
    assert!(
        message.starts_with("building \"index.js\" failed: index.js:3:"),
        "the file and line as uploaded: {message}"
    );
    assert!(message.contains("Expected \")\""), "{message}");
    let none = api
        .admin(Method::GET, &api.script_path("hello", ""), None)
        .await;
    assert_eq!(none.status, 404, "nothing was stored");

    // A module worker as wrangler bundles it, with a second module and a source map.
    let main = b"import { answer } from './lib/answer.js';\n\
        export default { async fetch(request, env) { return env.API.fetch(`http://api.internal/${answer}`); } };\n";
    let lib = b"export const answer = 'forty-two';\n";
    let deployed = api
        .send_form(
            Method::PUT,
            &api.script_path("hello", ""),
            json!({ "main_module": "index.js", "bindings": bindings, "compatibility_date": "2025-01-01" }),
            &[
                ("index.js", JS, main),
                ("lib/answer.js", JS, lib),
                ("index.js.map", "application/source-map", b"{\"version\":3,\"mappings\":\"\"}"),
            ],
        )
        .await;
    assert_eq!(deployed.status, 200, "{:#}", deployed.body);
    assert_eq!(deployed.result()["main_module"], "index.js");
    assert_eq!(deployed.result()["bindings"][0]["service_id"], service);
    let module = api.content("hello").await;
    assert!(
        module.starts_with(b"\0asm"),
        "the stored module is the built component"
    );
    assert!(
        wasmparser::Parser::is_component(&module),
        "a component, not a core module"
    );
}

#[tokio::test]
async fn a_server_that_cannot_build_javascript_answers_503_and_wasm_uploads_go_on() {
    // A cache "directory" under a regular file: the build cannot even start.
    let file = std::env::temp_dir().join(format!("wvpc-not-a-dir-{}", Uuid::new_v4()));
    std::fs::write(&file, b"").unwrap();
    let api = api_building_with(wvpc_js_build::JsBuilder::new(file.join("js"))).await;
    let js = b"export default { fetch() { return new Response('hi'); } };";
    let answer = api
        .send_form(
            Method::PUT,
            &api.script_path("hello", ""),
            json!({ "main_module": "index.js" }),
            &[("index.js", JS, js)],
        )
        .await;
    assert_eq!(answer.status, 503, "{:#}", answer.body);
    let (code, message) = answer.error();
    assert_eq!(code, u64::from(code::BUILD_UNAVAILABLE));
    assert!(
        message.starts_with("this directory cannot build JavaScript scripts now: "),
        "{message}"
    );
    let wasm = api
        .upload(
            &api.admin.clone(),
            "hello",
            json!({ "main_module": "worker.wasm" }),
            &handler(0),
        )
        .await;
    assert_eq!(
        wasm.status, 200,
        "a wasm upload needs no build: {:#}",
        wasm.body
    );
    let _ = std::fs::remove_file(&file);
}
