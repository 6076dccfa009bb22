//! What the directory API reads from clients (`wvpc_directory`): service objects, script
//! uploads, and bearer tokens.

use std::path::PathBuf;
use std::sync::OnceLock;

use wvpc_directory::api::envelope::ApiError;
use wvpc_directory::api::{ScriptForm, read_script_upload, read_service_body};
use wvpc_directory::routes::normalize_pattern;
use wvpc_directory::{Directory, Role, Service, ServiceInput};

fn assert_client_error(err: &ApiError) {
    assert!(err.status.is_client_error(), "status {}", err.status);
    assert!(!err.errors.is_empty());
    assert!(err.errors.iter().all(|e| !e.message.is_empty()));
}

/// A body reads as a service input or is refused as the client's error naming each problem;
/// a read input writes back to JSON that reads the same; a valid input describes a service
/// whose own input validates to the same service.
pub fn service_json(data: &[u8]) {
    let input = match read_service_body(Some("application/json"), data) {
        Ok(input) => input,
        Err(err) => return assert_client_error(&err),
    };
    let json = serde_json::to_vec(&input).expect("a service input serializes");
    assert_eq!(
        read_service_body(None, &json).ok().as_ref(),
        Some(&input),
        "{}",
        String::from_utf8_lossy(&json)
    );
    match input.validate() {
        Ok(spec) => {
            let service = Service {
                service_id: uuid::Uuid::nil(),
                name: spec.name.clone(),
                kind: spec.kind,
                host: spec.host.clone(),
                tls_settings: spec.tls_settings.clone(),
                created_at: String::new(),
                updated_at: String::new(),
            };
            let again = ServiceInput::from(&service)
                .validate()
                .unwrap_or_else(|err| panic!("a valid service's input is invalid: {err}"));
            assert_eq!(again, spec);
        }
        Err(err) => {
            assert!(!err.problems.is_empty());
            for problem in &err.problems {
                assert!(!problem.path.is_empty() && !problem.message.is_empty());
            }
        }
    }
}

/// `<content type>\n<body>`; without a newline, the whole input is the body of a form with
/// boundary `XyZ`. An upload is refused as the client's error, or has a wasm module, named
/// bindings and routes that are already normal.
pub fn script_upload(data: &[u8]) {
    let (content_type, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => ("multipart/form-data; boundary=XyZ".to_owned(), data),
    };
    match read_script_upload(Some(&content_type), body) {
        Ok(form) => {
            match &form {
                ScriptForm::Wasm(upload) => assert!(upload.module.starts_with(b"\0asm")),
                ScriptForm::JavaScript(js) => assert!(
                    js.modules()
                        .iter()
                        .any(|(name, _)| name == js.main_module()),
                    "the main module is among the uploaded modules"
                ),
            }
            let upload = form.metadata();
            assert!(upload.bindings.iter().all(|b| !b.binding.is_empty()));
            for route in &upload.routes {
                assert_eq!(
                    normalize_pattern(&route.pattern, false).as_deref(),
                    Ok(route.pattern.as_str()),
                    "a normalized route normalizes to itself"
                );
                if route.custom_domain {
                    let host = route.pattern.strip_suffix("/*").expect("a whole host");
                    assert_eq!(
                        normalize_pattern(host, true).as_deref(),
                        Ok(route.pattern.as_str())
                    );
                }
            }
        }
        Err(err) => assert_client_error(&err),
    }
}

/// A directory with one token of each role; the secrets.
fn tokens() -> &'static (Directory, Vec<String>) {
    static TOKENS: OnceLock<(Directory, Vec<String>)> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let state: PathBuf = super::scratch("tokens");
        let directory = Directory::open(&state).expect("opening a directory");
        let secrets = [Role::Read, Role::Bind, Role::Admin]
            .into_iter()
            .map(|role| {
                directory
                    .create_token("fuzz", role, None)
                    .expect("creating a token")
                    .1
            })
            .collect();
        (directory, secrets)
    })
}

/// A bearer authenticates exactly when it is one of the tokens' secrets; nothing else a
/// client sends (a secret with bytes added or removed included) does, and none fails.
pub fn api_token(data: &[u8]) {
    let (directory, secrets) = tokens();
    let bearer = String::from_utf8_lossy(data);
    let found = directory
        .authenticate(&bearer)
        .expect("authentication answers for any bearer");
    assert_eq!(found.is_some(), secrets.iter().any(|s| *s == bearer));
    // Near misses of a real secret.
    let secret = &secrets[data.len() % secrets.len()];
    let near = [
        format!("{secret}{bearer}"),
        format!("{bearer}{secret}"),
        secret[..secret.len() - 1].to_owned(),
    ];
    for candidate in near {
        let found = directory
            .authenticate(&candidate)
            .expect("authentication answers");
        assert_eq!(found.is_some(), candidate == *secret, "{candidate:?}");
    }
}
