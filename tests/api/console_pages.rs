//! The review desk's pages, read and used in a real headless Chromium
//! ([`Browser`]): logging in, filtering, reviewing, reprocessing, correcting,
//! the product chart, and hostile values that must show as text and never
//! run.

use serde_json::Value;

use crate::browser::Browser;
use crate::console::{spawn_desk, stored_by_an_old_parser, Desk, ALICE_SECRET};
use crate::helpers::SAMPLE_TICKET;

const PARTIAL_TICKET: &str =
    "Order: 777\nVAT: 3.10\nTotal: 16.90\n\nproduct,product_id,price\nFormule(s) midi,aZde,14.90\nCafé,IZ8z,deux\n";
const INVALID_TICKET: &str = "<html>502 Bad Gateway</html>";
/// Each payload sets `window.__xss` if it ever runs.
const SCRIPT_PAYLOAD: &str = "<script>window.__xss=1</script>";
const IMG_PAYLOAD: &str = r#""><img src=x onerror="window.__xss=1">"#;

/// A ticket whose order id and product names are the payloads.
fn hostile_ticket() -> String {
    let quoted_img = format!("\"{}\"", IMG_PAYLOAD.replace('"', "\"\""));
    format!(
        "Order: {SCRIPT_PAYLOAD}{IMG_PAYLOAD}\nVAT: 0.30\nTotal: 3.00\n\nproduct,product_id,price\n\
         {SCRIPT_PAYLOAD},XSS1,1.00\n{quoted_img},XSS2,2.00\n"
    )
}

/// Three prices of `IZ8z` over a month, besides what the writers record.
async fn price_history(desk: &Desk) -> i64 {
    sqlx::query(
        "INSERT INTO product_history (product_id, name, price, first_seen_at, last_seen_at, times_seen)
         VALUES ('IZ8z', 'Petit café', 1.50, now() - interval '30 days', now() - interval '20 days', 4),
                ('IZ8z', 'Café', 1.80, now() - interval '19 days', now() - interval '5 days', 9),
                ('IZ8z', 'Café serré', 1.80, now() - interval '4 days', now() - interval '2 days', 2)
         ON CONFLICT DO NOTHING",
    )
    .execute(&desk.app.db)
    .await
    .expect("history");
    sqlx::query_scalar("SELECT count(*) FROM product_history WHERE product_id = 'IZ8z'")
        .fetch_one(&desk.app.db)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_filters_opens_reviews_reprocesses_and_corrects_tickets_in_the_browser() {
    // Arrange
    let desk = spawn_desk().await;
    desk.ingest(SAMPLE_TICKET).await;
    let partial = desk.ingest(PARTIAL_TICKET).await;
    let invalid = desk.ingest(INVALID_TICKET).await;
    let old = stored_by_an_old_parser(&desk).await;
    let history_rows = price_history(&desk).await;
    let browser = Browser::start().await;

    // Without a session: the login form, not JSON.
    browser.goto(&format!("{}/tickets", desk.base)).await;
    assert!(browser.text_of("h1").await.contains("log in"));

    // Log in through the link scripts/run.sh prints.
    browser.goto(&format!("{}/login?token={ALICE_SECRET}&next=/tickets", desk.base)).await;
    assert_eq!(browser.text_of("h1").await, "Tickets");
    assert_eq!(browser.execute("return document.querySelectorAll('tr.ticket').length;").await, 4);

    // Filter by problem code.
    browser.fill("#filters input[name=problem]", "bad_price").await;
    browser.submit("#filters").await;
    assert!(browser.current_url().await.contains("problem=bad_price"));
    assert_eq!(browser.execute("return document.querySelectorAll('tr.ticket').length;").await, 1);
    assert_eq!(browser.text_of("tr.ticket td.order").await, "777");

    // Open it: the raw body by line, the problem beside its line.
    browser.click("tr.ticket a").await;
    assert_eq!(browser.text_of("#status").await, "partial");
    assert!(browser.current_url().await.ends_with(&partial));
    let bad_line = browser.text_of("#raw tr.bad").await;
    assert!(bad_line.contains("Café,IZ8z,deux") && bad_line.contains("bad_price"), "{bad_line}");
    let download = browser.execute("return document.querySelector('#download').getAttribute('href');").await;
    assert_eq!(download, format!("/api/v1/tickets/{partial}/raw"));
    browser.screenshot("ticket").await;

    // Reject it with a note.
    browser.click("#review input[value=rejected]").await;
    browser.fill("#review textarea[name=note]", "price written in words").await;
    browser.submit("#review").await;
    assert_eq!(browser.text_of("#outcome").await, "Review recorded: rejected.");
    assert!(browser.current_url().await.ends_with(&format!("/tickets/{partial}?done=rejected")));
    assert_eq!(browser.text_of("#reviews td.decision").await, "rejected");
    assert_eq!(browser.text_of("#reviews td.note").await, "price written in words");

    // Reprocess a ticket an older parser could not read.
    browser.goto(&format!("{}/tickets/{old}", desk.base)).await;
    assert_eq!(browser.text_of("#status").await, "invalid");
    browser.submit("#reprocess").await;
    assert_eq!(browser.text_of("#outcome").await, "Reprocessed with today's parser: the ticket changed.");
    assert_eq!(browser.text_of("#status").await, "ok");

    // Correct the invalid one: a new ticket, linked both ways.
    browser.goto(&format!("{}/tickets/{invalid}", desk.base)).await;
    browser.fill("#correction textarea[name=raw]", SAMPLE_TICKET).await;
    browser.submit("#correction").await;
    assert_eq!(browser.text_of("#outcome").await, "Correction stored as a new ticket (linked below).");
    browser.click("#superseded-by").await;
    assert_eq!(browser.text_of("#status").await, "ok");
    assert_eq!(browser.text_of("#corrects").await, invalid);

    // A product and its chart: one point per history row.
    browser.goto(&format!("{}/products", desk.base)).await;
    browser.fill("#search input[name=q]", "caf").await;
    browser.submit("#search").await;
    assert_eq!(browser.execute("return document.querySelectorAll('tr.product').length;").await, 1);
    browser.click("tr.product a").await;
    assert_eq!(browser.text_of("h1").await, "Product IZ8z");
    let points = browser.execute("return document.querySelectorAll('svg#price-chart circle.point').length;").await;
    assert_eq!(points, Value::from(history_rows));
    let names = browser.text_of("#names").await;
    assert!(names.contains("Petit café") && names.contains("Café serré"), "{names}");
    browser.screenshot("product").await;
    assert_eq!(browser.alerts_or_injected_markers().await, Vec::<String>::new());

    browser.close().await;
    desk.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_order_ids_and_product_names_show_as_text_and_never_run() {
    // Arrange
    let desk = spawn_desk().await;
    let id = desk.ingest(hostile_ticket()).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/login?token={ALICE_SECRET}&next=/tickets", desk.base)).await;

    // The list.
    assert_eq!(browser.text_of("tr.ticket td.order").await, format!("{SCRIPT_PAYLOAD}{IMG_PAYLOAD}"));
    assert_eq!(browser.alerts_or_injected_markers().await, Vec::<String>::new());

    // The ticket, its raw body and its lines; the filter echoes the order id back.
    browser.goto(&format!("{}/tickets/{id}", desk.base)).await;
    assert_eq!(browser.text_of("#order").await, format!("{SCRIPT_PAYLOAD}{IMG_PAYLOAD}"));
    let names = browser.execute("return [...document.querySelectorAll('#lines td.name')].map(e => e.textContent);");
    assert_eq!(names.await, serde_json::json!([SCRIPT_PAYLOAD, IMG_PAYLOAD]));
    assert!(browser.text_of("#raw").await.contains(SCRIPT_PAYLOAD));
    assert_eq!(browser.alerts_or_injected_markers().await, Vec::<String>::new());
    browser.screenshot("hostile-ticket").await;

    let order =
        url::form_urlencoded::byte_serialize(format!("{SCRIPT_PAYLOAD}{IMG_PAYLOAD}").as_bytes()).collect::<String>();
    browser.goto(&format!("{}/tickets?order={order}", desk.base)).await;
    assert_eq!(
        browser.execute("return document.querySelector('#filters input[name=order]').value;").await,
        format!("{SCRIPT_PAYLOAD}{IMG_PAYLOAD}")
    );
    assert_eq!(browser.execute("return document.querySelectorAll('tr.ticket').length;").await, 1);
    assert_eq!(browser.alerts_or_injected_markers().await, Vec::<String>::new());

    // The catalogue and the product page, chart tooltips included.
    browser.goto(&format!("{}/products?q=XSS", desk.base)).await;
    assert_eq!(browser.execute("return document.querySelectorAll('tr.product').length;").await, 2);
    assert_eq!(browser.alerts_or_injected_markers().await, Vec::<String>::new());
    browser.goto(&format!("{}/products/XSS2", desk.base)).await;
    assert_eq!(browser.text_of("#product td.name").await, IMG_PAYLOAD);
    assert_eq!(browser.alerts_or_injected_markers().await, Vec::<String>::new());

    browser.close().await;
    desk.app.stop().await;
}
