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
