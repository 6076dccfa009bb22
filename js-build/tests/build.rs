//! Builds real scripts with the real toolchain (node + npm from the machine; skipped without
//! them). The cache lives under the cargo target dir, shared by every test run.

use std::path::{Path, PathBuf};

use wvpc_js_build::{JsBuildError, JsBuilder};

fn builder() -> Option<JsBuilder> {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED (node): Node.js is not installed");
        return None;
    }
    Some(JsBuilder::new(cache_dir()).with_bindings(["API".to_owned()]))
}

/// `$WVPC_JS_CACHE_DIR`, else `<target>/wvpc-js`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WVPC_JS_CACHE_DIR") {
        return dir.into();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.parent().unwrap().join("target"))
        .join("wvpc-js")
}

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn the_example_proxy_builds_into_a_component_and_a_second_build_is_cached() {
    let Some(builder) = builder() else { return };
    let entry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy-js/src/index.js");
    let first = builder.build_entry(&entry).expect("the example builds");
    let bytes = std::fs::read(&first.wasm).unwrap();
    assert!(bytes.starts_with(b"\0asm"), "a wasm binary");
    assert!(
        first
            .inputs
            .iter()
            .any(|p| p.ends_with("examples/proxy-js/src/index.js")),
        "{:?}",
        first.inputs
    );
    let second = builder.build_entry(&entry).unwrap();
    assert!(second.cached, "an unchanged script is not compiled again");
    assert_eq!(second.wasm, first.wasm);
}

#[test]
fn a_syntax_error_names_the_file_line_and_message() {
    let Some(builder) = builder() else { return };
    let dir = project(&[(
        "src/index.js",
        "export default {\n  async fetch(request) {\n    return new Response('x'\n  },\n};\n",
    )]);
    let err = builder
        .build_entry(&dir.path().join("src/index.js"))
        .expect_err("a syntax error");
    let JsBuildError::Script(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("src/index.js:4:"), "{text}");
    assert!(text.contains("error: Expected \")\""), "{text}");
}

#[test]
fn a_script_without_a_default_export_or_fetch_handler_is_refused_at_build_time() {
    let Some(builder) = builder() else { return };
    let dir = project(&[
        ("a.js", "export const handler = { fetch() {} };\n"),
        ("b.js", "export default { scheduled() {} };\n"),
    ]);
    let err = builder.build_entry(&dir.path().join("a.js")).unwrap_err();
    assert!(err.to_string().contains("has no default export"), "{err}");
    let err = builder.build_entry(&dir.path().join("b.js")).unwrap_err();
    assert!(matches!(err, JsBuildError::Script(_)), "{err:?}");
    assert!(
        err.to_string()
            .ends_with("b.js: the script's default export has no fetch handler: export default { async fetch(request, env, ctx) { ... } }"),
        "{err}"
    );
}

#[test]
fn the_component_says_it_serves_one_request_per_instance() {
    let Some(builder) = builder() else { return };
    let entry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy-js/src/index.js");
    let built = builder.build_entry(&entry).unwrap();
    let bytes = std::fs::read(&built.wasm).unwrap();
    let name = wvpc_js_build::ISOLATION_SECTION.as_bytes();
    let at = bytes
        .windows(name.len())
        .rposition(|w| w == name)
        .expect("the marker section");
    assert_eq!(
        &bytes[at + name.len()..],
        b"request",
        "the last section is the marker"
    );
}

#[test]
fn an_exception_at_the_top_level_fails_the_build_with_its_message() {
    let Some(builder) = builder() else { return };
    let dir = project(&[(
        "index.js",
        "const table = JSON.parse('{oops');\nexport default { fetch() { return new Response(table); } };\n",
    )]);
    let err = builder
        .build_entry(&dir.path().join("index.js"))
        .unwrap_err();
    assert!(matches!(err, JsBuildError::Script(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("the script threw while it was initialized"),
        "{text}"
    );
    assert!(text.contains("SyntaxError: JSON.parse"), "{text}");
}

#[test]
fn a_typescript_entry_with_relative_imports_builds_and_lists_its_sources() {
    let Some(builder) = builder() else { return };
    let dir = project(&[
        (
            "src/index.ts",
            "import { greet } from './greet';\n\
             interface Env { API: { fetch(input: string): Promise<Response> } }\n\
             export default {\n  async fetch(request: Request, env: Env): Promise<Response> {\n    \
             return new Response(greet(new URL(request.url).pathname));\n  },\n};\n",
        ),
        (
            "src/greet.ts",
            "export function greet(who: string): string { return `hello ${who}`; }\n",
        ),
    ]);
    let built = builder
        .build_entry(&dir.path().join("src/index.ts"))
        .expect("TypeScript builds");
    let mut sources: Vec<_> = built
        .inputs
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    sources.sort();
    assert_eq!(sources, ["greet.ts", "index.ts"]);
}

#[test]
fn an_upload_builds_and_its_errors_name_the_modules_as_uploaded() {
    let Some(builder) = builder() else { return };
    let modules = vec![
        (
            "index.js".to_owned(),
            b"import { answer } from './lib/answer.js';\nexport default { fetch() { return new Response(answer()); } };\n".to_vec(),
        ),
        (
            "lib/answer.js".to_owned(),
            b"export function answer() {\n  return 'x' +;\n}\n".to_vec(),
        ),
    ];
    let err = builder.build_modules("index.js", &modules).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("lib/answer.js:2:"), "{text}");
    let refused = builder
        .build_modules("index.js", &[("../escape.js".to_owned(), b"x".to_vec())])
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("not a relative path inside the upload"),
        "{refused}"
    );
}
