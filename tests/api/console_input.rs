//! Hostile input to the review desk: every parameter, path segment and
//! field is bounded and checked, so bad input gets a `400` naming what is
//! wrong, never a `500` with the database's text, never a closed
//! connection; stored text that could mislead a reader is shown visibly.

use serde_json::Value;

use crate::console::{spawn_desk, Desk};

/// The status and body of `GET path`, with the session cookie when
/// `cookie` is given (pages), else the bearer token (API).
async fn get(desk: &Desk, path: &str, cookie: Option<&str>) -> (u16, String) {
    let request = desk.client.get(format!("{}{path}", desk.base));
    let request = match cookie {
        Some(cookie) => request.header("cookie", cookie),
        None => request.bearer_auth(crate::console::ALICE_SECRET),
    };
    let response = request.send().await.unwrap_or_else(|error| panic!("GET {path}: no answer: {error}"));
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// What PostgreSQL says of a NUL byte or a date it cannot take.
fn leaks_the_database(body: &str) -> bool {
    ["invalid byte sequence", "0x00", "out of range", "SQLSTATE", "error returned from database", "internal error:"]
        .iter()
        .any(|text| body.contains(text))
}

#[tokio::test]
async fn a_nul_byte_in_any_text_parameter_is_a_400_naming_it() {
    let desk = spawn_desk().await;
    desk.ingest(crate::helpers::SAMPLE_TICKET).await;
    let cookie = desk.log_in().await;

    for (path, parameter, on_page) in [
        ("/api/v1/tickets?order=%00", "order", false),
        ("/api/v1/tickets?problem=bad%00price", "problem", false),
        ("/api/v1/products?q=a%00", "q", false),
        ("/api/v1/products?after=%00", "after", false),
        ("/api/v1/products/IZ%008z", "product", false),
        ("/tickets?order=%00", "order", true),
        ("/tickets?problem=%00", "problem", true),
        ("/products?q=%00", "q", true),
        ("/products?after=x%00", "after", true),
        ("/products/IZ%008z", "product", true),
    ] {
        let (status, body) = get(&desk, path, on_page.then_some(cookie.as_str())).await;

        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(parameter), "{path}: the answer names {parameter}: {body}");
        assert!(!leaks_the_database(&body), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_nul_byte_in_a_review_note_is_a_400_and_nothing_is_recorded() {
    let desk = spawn_desk().await;
    let id = desk.ingest("<html>502 Bad Gateway</html>").await;

    let response = desk
        .post_json(
            &format!("/api/v1/tickets/{id}/review"),
            &serde_json::json!({"decision": "accepted", "note": "a\u{0}b"}),
        )
        .await;

    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("note"), "{error}");
    assert!(!leaks_the_database(error), "{error}");
    assert_eq!(desk.app.count("ticket_reviews").await, 0);
}

#[tokio::test]
async fn times_past_year_9999_or_before_4713_bc_are_a_400_not_a_panic() {
    let desk = spawn_desk().await;
    desk.ingest(crate::helpers::SAMPLE_TICKET).await;
    let cookie = desk.log_in().await;

    for (query, parameter) in [
        ("until=9999-12-31T23:59:00Z", "until"),
        ("since=9999-12-31T23:59:59Z", "since"),
        // Year 10000 once in UTC.
        ("until=9999-12-31T23:30:00-01:00", "until"),
        ("since=0000-01-01T00:00:00Z", "since"),
        // A cursor before 4713 BC.
        ("after=-300000000000000000.0190e8a1c2d37b3c8f0e1d2c3b4a5968", "after"),
    ] {
        for (path, on_page) in [(format!("/api/v1/tickets?{query}"), false), (format!("/tickets?{query}"), true)] {
            let (status, body) = get(&desk, &path, on_page.then_some(cookie.as_str())).await;

            assert_eq!(status, 400, "{path}: {body}");
            assert!(body.contains(parameter), "{path}: the answer names {parameter}: {body}");
            assert!(!leaks_the_database(&body), "{path}: {body}");
        }
    }
    // The desk still answers.
    assert_eq!(get(&desk, "/api/v1/tickets", None).await.0, 200);
}

#[tokio::test]
async fn bidi_controls_in_stored_text_are_shown_visibly() {
    let desk = spawn_desk().await;
    // U+202E would show "Croissant 1.00" as "00.1 tnassiorC", and the
    // isolates can hide text the same way.
    let ticket =
        "Order: 9\u{202e}1\nVAT: 0.30\nTotal: 3.00\n\nproduct,product_id,price\nCroi\u{202e}ssant\u{2066},BIDI1,1.00\n";
    let id = desk.ingest(ticket).await;
    let cookie = desk.log_in().await;

    for path in [
        format!("/tickets/{id}"),
        "/tickets".to_string(),
        "/products?q=BIDI".to_string(),
        "/products/BIDI1".to_string(),
    ] {
        let (status, page) = get(&desk, &path, Some(&cookie)).await;

        assert_eq!(status, 200, "{path}");
        assert!(!page.contains('\u{202e}') && !page.contains('\u{2066}'), "{path}: a bidi control is rendered as is");
        assert!(page.contains("U+202E"), "{path}: the control is named: {page}");
    }
}

#[tokio::test]
async fn products_whose_id_is_a_dot_or_two_open_from_their_links() {
    let desk = spawn_desk().await;
    desk.ingest("Order: 1\nVAT: 0.30\nTotal: 3.00\n\nproduct,product_id,price\nDot,.,1.00\nDots,..,2.00\n").await;
    let cookie = desk.log_in().await;
    let (_, list) = get(&desk, "/products", Some(&cookie)).await;
    let base = url::Url::parse(&format!("{}/products", desk.base)).expect("base");

    for (product_id, name) in [(".", "Dot"), ("..", "Dots")] {
        // The link in the list, resolved as a browser resolves it.
        let link = list
            .split("<a href=\"")
            .skip(1)
            .find(|rest| rest.split_once('"').is_some_and(|(_, after)| after.starts_with(&format!(">{product_id}<"))))
            .and_then(|rest| rest.split_once('"'))
            .map(|(href, _)| href.replace("&amp;", "&"))
            .unwrap_or_else(|| panic!("a link to {product_id}: {list}"));
        let target = base.join(&link).expect("resolves");

        let (status, page) = get(&desk, &target[url::Position::BeforePath..], Some(&cookie)).await;

        assert_eq!(status, 200, "{product_id}: {link} resolved to {target}");
        assert!(
            page.contains(&format!("class=\"name\">{name}<")) || page.contains(&format!(">{name}<")),
            "{product_id}: {page}"
        );
    }
}
