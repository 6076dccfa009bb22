//! `fetch` semantics at the runtime: absolute http(s) URLs only, the URL's host and port
//! passed through untouched (the binding-worker makes them `Host`/SNI and ignores the port),
//! and redirects — `manual` returns them, `follow` re-sends through the same binding.

use crate::fake_binding_worker::FakeBindingWorker;
use crate::{Client, SERVICE, guests, serve};

fn line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key))
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_must_be_absolute_http_or_https() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let mut client = Client::connect(served.addr).await;

    let relative = client.get("/fetch/GET/follow//relative/path").await;
    assert_eq!(
        (relative.status, relative.text()),
        (
            502,
            "ProxyError: http_request_error (fetch() needs an absolute URL such as \
             http://api.internal/path, got \"/relative/path\")"
        )
    );
    let ftp = client.get("/fetch/GET/follow/ftp://api.internal/x").await;
    assert_eq!(
        (ftp.status, ftp.text()),
        (
            502,
            "ProxyError: http_request_error (fetch() supports http and https URLs, not ftp: \
             \"ftp://api.internal/x\")"
        )
    );
    assert_eq!(fake.connections(), 0, "nothing was sent");

    // Host and port go to the binding-worker as written; it never routes by them.
    let https = client
        .get("/fetch/GET/follow/https://api.internal:8443/x?y=1")
        .await;
    assert_eq!(https.status, 200, "{:?}", https.body);
    let text = https.text();
    assert_eq!(line(text, "url="), Some("https://api.internal:8443/x?y=1"));
    assert!(
        text.contains(&format!("service={SERVICE} binding=API")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_returns_the_redirect() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let answer = Client::connect(served.addr)
        .await
        .get("/fetch/GET/manual/http://api.internal/redirect/302?to=http://elsewhere.example/next")
        .await;
    assert_eq!(
        answer.text(),
        "status=302\nlocation=http://elsewhere.example/next\nredirecting"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_resends_through_the_same_binding() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let mut client = Client::connect(served.addr).await;

    // An absolute Location on another host: the host only becomes the URL host (Host header)
    // of the next hop, which goes through the same binding to the same service.
    let answer = client
        .get("/fetch/GET/follow/http://api.internal/redirect/302?to=http://other.internal:9000/final?q=1")
        .await;
    let text = answer.text();
    assert_eq!(line(text, "status="), Some("200"), "{text}");
    assert_eq!(
        line(text, "url="),
        Some("http://other.internal:9000/final?q=1")
    );
    assert!(
        text.contains(&format!("service={SERVICE} binding=API")),
        "{text}"
    );

    // A relative Location resolves against the request URL.
    let answer = client
        .get("/fetch/GET/follow/http://api.internal/redirect/301?to=../c/./d")
        .await;
    assert_eq!(line(answer.text(), "url="), Some("http://api.internal/c/d"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_change_method_and_body_as_browsers_do() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let mut client = Client::connect(served.addr).await;
    let post =
        |status: u16| format!("/fetch/POST/follow/http://api.internal/redirect/{status}?to=/after");

    // 303, and 301/302 after a POST: GET without the body or its headers.
    for status in [303, 302, 301] {
        let answer = client
            .send(
                "POST",
                &post(status),
                &[("content-type", "text/plain")],
                "payload",
            )
            .await;
        let text = answer.text();
        assert_eq!(line(text, "method="), Some("GET"), "{status}: {text}");
        assert_eq!(line(text, "path="), Some("/after"));
        assert_eq!(line(text, "body="), Some(""), "{status}: {text}");
        assert!(!text.contains("header content-type"), "{status}: {text}");
    }
    // 307 and 308 keep the method and send the body again.
    for status in [307, 308] {
        let answer = client.send("POST", &post(status), &[], "payload").await;
        let text = answer.text();
        assert_eq!(line(text, "method="), Some("POST"), "{status}: {text}");
        assert_eq!(line(text, "body="), Some("payload"), "{status}: {text}");
    }
    // A body over 1 MiB is not kept for a second send.
    let big = "z".repeat(1_500_000);
    let answer = client.send("POST", &post(307), &[], &big).await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: redirect_body_not_replayable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn at_most_twenty_redirects_are_followed() {
    let fake = FakeBindingWorker::start();
    let served = serve(&guests::guests().checks, fake.addr).await;
    let answer = Client::connect(served.addr)
        .await
        .get("/fetch/GET/follow/http://api.internal/redirect-loop")
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: redirect_limit_reached")
    );
}
