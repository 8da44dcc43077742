//! The review desk: its own listener, token auth, the JSON API.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use ticket_ingest::config::AckMode;
use uuid::Uuid;

use crate::helpers::{
    admin_tokens, free_port, fresh_database, numbered_ticket, parsed_url, spawn_app_with, temp_dir, TestApp,
    SAMPLE_TICKET,
};

pub const ALICE_SECRET: &str = "secret-of-alice-0123456789";
const BOB_SECRET: &str = "secret-of-bob-0123456789";
const PARTIAL_TICKET: &str =
    "Order: 777\nVAT: 3.10\nTotal: 16.90\n\nproduct,product_id,price\nFormule(s) midi,aZde,14.90\nCafé,IZ8z,deux\n";
const INVALID_TICKET: &str = "<html>502 Bad Gateway</html>";

/// The service with its review desk, tickets committed before `202`.
pub struct Desk {
    pub app: TestApp,
    pub base: String,
    /// Follows no redirect.
    pub client: reqwest::Client,
}

pub async fn spawn_desk() -> Desk {
    let app = spawn_app_with(|settings| {
        settings.ack = AckMode::Commit;
        settings.admin_tokens = admin_tokens(&[format!("alice:{ALICE_SECRET}"), BOB_SECRET.to_string()]);
    })
    .await;
    let base = app.admin_address.clone().expect("the console runs when it has tokens");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    Desk { app, base, client }
}

/// A ticket as an older parser stored it: invalid, though today's parser
/// understands it.
pub async fn stored_by_an_old_parser(desk: &Desk) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tickets (id, received_at, status, problems, raw)
         VALUES ($1, now(), 'invalid', '[{\"line\": 0, \"code\": \"old_parser\", \"message\": \"?\"}]', $2)",
    )
    .bind(id)
    .bind(SAMPLE_TICKET.as_bytes())
    .execute(&desk.app.db)
    .await
    .expect("insert");
    id
}

impl Desk {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base)).bearer_auth(ALICE_SECRET).send().await.expect("sent")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON")
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(ALICE_SECRET)
            .body(body)
            .send()
            .await
            .expect("sent")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post(path, body.to_string()).await
    }

    /// Posts a ticket to the webhook; returns its id.
    pub async fn ingest(&self, body: impl Into<reqwest::Body>) -> String {
        let response = self.app.post_ticket(body).await;
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.expect("JSON");
        answer["id"].as_str().expect("id").to_string()
    }

    /// The session cookie `/login` sets.
    pub async fn log_in(&self) -> String {
        let response = self.client.get(format!("{}/login?token={ALICE_SECRET}", self.base)).send().await.expect("sent");
        assert_eq!(response.status(), 303);
        let cookie = response.headers()["set-cookie"].to_str().expect("ASCII").to_string();
        cookie.split(';').next().expect("name=value").to_string()
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .map(|ticket| ticket["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn the_api_answers_401_in_json_without_a_valid_token() {
    let desk = spawn_desk().await;

    let without = desk.client.get(format!("{}/api/v1/tickets", desk.base)).send().await.expect("sent");
    let wrong =
        desk.client.get(format!("{}/api/v1/tickets", desk.base)).bearer_auth("not-a-token-0123456789").send().await;

    assert_eq!(without.status(), 401);
    assert!(without.headers()["www-authenticate"].to_str().expect("ASCII").starts_with("Bearer"));
    let body: Value = without.json().await.expect("JSON error");
    assert!(body["error"].as_str().expect("message").contains("token"));
    assert_eq!(wrong.expect("sent").status(), 401);
}

#[tokio::test]
async fn a_page_without_a_session_shows_the_login_form() {
    let desk = spawn_desk().await;

    let response = desk.client.get(format!("{}/tickets?status=invalid", desk.base)).send().await.expect("sent");

    assert_eq!(response.status(), 401);
    assert!(response.headers()["content-type"].to_str().expect("ASCII").starts_with("text/html"));
    let page = response.text().await.expect("text");
    assert!(page.contains("<form") && page.contains("name=\"token\""), "{page}");
    assert!(page.contains("value=\"/tickets?status=invalid\""), "next is kept: {page}");
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_redirects_to_next() {
    let desk = spawn_desk().await;

    let response = desk
        .client
        .get(format!("{}/login?token={ALICE_SECRET}&next=%2Ftickets%3Fstatus%3Dinvalid", desk.base))
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/tickets?status=invalid");
    let set_cookie = response.headers()["set-cookie"].to_str().expect("ASCII").to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("name=value");
    let page = desk.client.get(format!("{}/tickets", desk.base)).header("cookie", cookie).send().await.expect("sent");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("text").contains("/api/v1/tickets"));
    let api = desk.client.get(format!("{}/api/v1/session", desk.base)).header("cookie", cookie).send().await;
    let session: Value = api.expect("sent").json().await.expect("JSON");
    assert_eq!(session["name"], "alice");
    let wrong = desk.client.get(format!("{}/login?token=wrong-token-0123456789", desk.base)).send().await;
    assert_eq!(wrong.expect("sent").status(), 401);
}

#[tokio::test]
async fn login_never_redirects_to_another_site() {
    let desk = spawn_desk().await;

    for next in ["%2F%2Fevil.example", "https%3A%2F%2Fevil.example%2F", "%2F%5Cevil.example", "evil.example"] {
        let url = format!("{}/login?token={ALICE_SECRET}&next={next}", desk.base);
        let response = desk.client.get(url).send().await.expect("sent");

        assert_eq!(response.status(), 303, "{next}");
        assert_eq!(response.headers()["location"], "/", "{next}");
    }
}

#[tokio::test]
async fn a_post_with_the_session_cookie_is_refused_without_its_csrf_token() {
    let desk = spawn_desk().await;
    let id = desk.ingest(SAMPLE_TICKET).await;
    let cookie = desk.log_in().await;
    let review = serde_json::json!({ "decision": "accepted" }).to_string();
    let url = format!("{}/api/v1/tickets/{id}/review", desk.base);

    let without = desk.client.post(&url).header("cookie", &cookie).body(review.clone()).send().await.expect("sent");
    let forged =
        desk.client.post(&url).header("cookie", &cookie).header("x-csrf-token", "forged").body(review.clone()).send();
    let forged = forged.await.expect("sent");
    let session: Value = desk
        .client
        .get(format!("{}/api/v1/session", desk.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let csrf = session["csrf_token"].as_str().expect("a session has a CSRF token");
    let with = desk.client.post(&url).header("cookie", &cookie).header("x-csrf-token", csrf).body(review).send();

    assert_eq!(without.status(), 403);
    assert_eq!(forged.status(), 403);
    assert_eq!(with.await.expect("sent").status(), 201);
    assert_eq!(desk.get_json("/api/v1/session").await["csrf_token"], Value::Null, "Bearer needs none");
}

#[tokio::test]
async fn tickets_are_listed_newest_first_and_filtered() {
    let desk = spawn_desk().await;
    let ok = desk.ingest(SAMPLE_TICKET).await;
    let partial = desk.ingest(PARTIAL_TICKET).await;
    let invalid = desk.ingest(INVALID_TICKET).await;

    let all = desk.get_json("/api/v1/tickets").await;
    let invalid_only = desk.get_json("/api/v1/tickets?status=invalid").await;
    let bad_price = desk.get_json("/api/v1/tickets?problem=bad_price").await;
    let order = desk.get_json("/api/v1/tickets?order=123456").await;
    let none_yet = desk.get_json("/api/v1/tickets?since=2999-01-01T00:00:00Z").await;
    let before_now = desk.get_json("/api/v1/tickets?status=partial&until=2999-01-01T00:00:00Z").await;

    assert_eq!(ids(&all), [invalid.clone(), partial.clone(), ok.clone()]);
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["tickets"][1]["total"], "16.90");
    assert_eq!(all["tickets"][1]["problems"][0]["code"], "bad_price");
    assert_eq!(all["tickets"][2]["problems"], serde_json::json!([]));
    assert_eq!(ids(&invalid_only), [invalid]);
    assert_eq!(ids(&bad_price), std::slice::from_ref(&partial));
    assert_eq!(ids(&order), [ok]);
    assert_eq!(ids(&none_yet), Vec::<String>::new());
    assert_eq!(ids(&before_now), [partial]);
    assert_eq!(desk.get("/api/v1/tickets?colour=blue").await.status(), 400);
    assert_eq!(desk.get("/api/v1/tickets?limit=0").await.status(), 400);
    assert_eq!(desk.get("/api/v1/tickets?status=bad").await.status(), 400);
}

#[tokio::test]
async fn pagination_is_stable_while_tickets_arrive() {
    let desk = spawn_desk().await;
    for order in 0..7 {
        desk.ingest(numbered_ticket(order)).await;
        desk.ingest(format!("garbage {order}")).await;
    }
    for filter in ["", "&status=invalid", "&status=ok"] {
        // What the listing holds when it starts, in one page.
        let expected = ids(&desk.get_json(&format!("/api/v1/tickets?limit=500{filter}")).await);
        assert!(expected.len() >= 7, "{filter:?}");
        let mut seen = Vec::new();
        let mut path = format!("/api/v1/tickets?limit=3{filter}");
        loop {
            let page = desk.get_json(&path).await;
            seen.extend(ids(&page));
            // Newer tickets arrive between pages: they belong before the
            // first page, never in the pages still to come.
            desk.ingest(numbered_ticket(1000 + seen.len() as u64)).await;
            desk.ingest(format!("garbage {}", 1000 + seen.len())).await;
            match page["next"].as_str() {
                Some(next) => path = format!("/api/v1/tickets?limit=3{filter}&after={next}"),
                None => break,
            }
        }
        assert_eq!(seen, expected, "filter {filter:?}");
    }
}

#[tokio::test]
async fn a_ticket_shows_its_header_lines_and_problems() {
    let desk = spawn_desk().await;
    let id = desk.ingest(PARTIAL_TICKET).await;

    let ticket = desk.get_json(&format!("/api/v1/tickets/{id}")).await;
    let unknown = desk.get(&format!("/api/v1/tickets/{}", Uuid::now_v7())).await;

    assert_eq!((ticket["status"].as_str(), ticket["order_id"].as_str()), (Some("partial"), Some("777")));
    assert_eq!((ticket["vat"].as_str(), ticket["total"].as_str()), (Some("3.10"), Some("16.90")));
    assert_eq!(ticket["lines"][0]["product_id"], "aZde");
    assert_eq!(ticket["lines"].as_array().map(Vec::len), Some(1));
    assert_eq!(ticket["problems"][0]["code"], "bad_price");
    assert_eq!(ticket["raw_bytes"], PARTIAL_TICKET.len());
    assert_eq!((ticket["corrects"].clone(), ticket["superseded_by"].clone()), (Value::Null, Value::Null));
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn the_raw_bytes_are_returned_exactly_even_when_not_utf8() {
    let desk = spawn_desk().await;
    let body: Vec<u8> = vec![b'O', b'r', 0xff, 0xfe, 0x00, b'\r', b'\n', 0xe9, 0x80, b'<', b's', b'>'];
    let id = desk.ingest(body.clone()).await;

    let response = desk.get(&format!("/api/v1/tickets/{id}/raw")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.bytes().await.expect("bytes").to_vec(), body);
}

#[tokio::test]
async fn two_reviews_are_both_kept_with_who_and_when() {
    let desk = spawn_desk().await;
    let id = desk.ingest(INVALID_TICKET).await;
    let path = format!("/api/v1/tickets/{id}/review");

    let first = desk.post_json(&path, &serde_json::json!({ "decision": "rejected", "note": "<b>junk</b>" })).await;
    let bob = desk
        .client
        .post(format!("{}{path}", desk.base))
        .bearer_auth(BOB_SECRET)
        .body(serde_json::json!({ "decision": "accepted" }).to_string())
        .send()
        .await
        .expect("sent");

    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("JSON");
    assert_eq!((first["reviewer"].as_str(), first["decision"].as_str()), (Some("alice"), Some("rejected")));
    assert_eq!(bob.status(), 201);
    let ticket = desk.get_json(&format!("/api/v1/tickets/{id}")).await;
    let trail = ticket["reviews"].as_array().expect("reviews");
    assert_eq!(trail.len(), 2);
    assert_eq!((trail[0]["decision"].as_str(), trail[0]["note"].as_str()), (Some("rejected"), Some("<b>junk</b>")));
    assert!(trail[1]["reviewer"].as_str().expect("who").starts_with("token-"), "a bare token is named by its digest");
    assert!(trail[1]["reviewed_at"].as_str() >= trail[0]["reviewed_at"].as_str());
    let listed = desk.get_json("/api/v1/tickets").await;
    assert_eq!(listed["tickets"][0]["review"]["decision"], "accepted", "the latest review is listed");
    let rewrite = sqlx::query("UPDATE ticket_reviews SET decision = 'accepted'").execute(&desk.app.db).await;
    assert!(rewrite.is_err(), "the trail cannot be rewritten");
    let deleted = sqlx::query("DELETE FROM ticket_reviews").execute(&desk.app.db).await;
    assert!(deleted.is_err(), "the trail cannot be deleted");
    let truncated = sqlx::query("TRUNCATE ticket_reviews").execute(&desk.app.db).await;
    assert!(truncated.is_err(), "the trail cannot be truncated");
    assert_eq!(crate::helpers::count(&desk.app.db, "ticket_reviews").await, 2);
    assert_eq!(desk.post_json(&path, &serde_json::json!({ "decision": "maybe" })).await.status(), 400);
    let unknown = format!("/api/v1/tickets/{}/review", Uuid::now_v7());
    assert_eq!(desk.post_json(&unknown, &serde_json::json!({ "decision": "accepted" })).await.status(), 404);
}

#[tokio::test]
async fn reprocessing_shows_before_and_after_and_updates_the_catalogue() {
    let desk = spawn_desk().await;
    let id = stored_by_an_old_parser(&desk).await;

    let response = desk.post(&format!("/api/v1/tickets/{id}/reprocess"), "").await;
    let again = desk.post(&format!("/api/v1/tickets/{id}/reprocess"), "").await;

    assert_eq!(response.status(), 200);
    let outcome: Value = response.json().await.expect("JSON");
    assert_eq!(
        (outcome["before"]["status"].as_str(), outcome["after"]["status"].as_str()),
        (Some("invalid"), Some("ok"))
    );
    assert_eq!(outcome["changed"], true);
    assert_eq!(outcome["after"]["lines"].as_array().map(Vec::len), Some(2));
    let seen: i64 = sqlx::query_scalar("SELECT times_seen FROM products WHERE product_id = 'aZde'")
        .fetch_one(&desk.app.db)
        .await
        .expect("in the catalogue");
    assert_eq!(seen, 1);
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["changed"], false);
    assert_eq!(desk.post(&format!("/api/v1/tickets/{}/reprocess", Uuid::now_v7()), "").await.status(), 404);
}

#[tokio::test]
async fn a_correction_is_a_new_ticket_linked_to_the_original_and_feeds_the_catalogue() {
    let desk = spawn_desk().await;
    let original = desk.ingest(INVALID_TICKET).await;
    let path = format!("/api/v1/tickets/{original}/correction");

    let response = desk.post(&path, SAMPLE_TICKET).await;
    let twice = desk.post(&path, SAMPLE_TICKET).await;

    assert_eq!(response.status(), 201);
    let corrected: Value = response.json().await.expect("JSON");
    let new_id = corrected["id"].as_str().expect("id").to_string();
    assert_ne!(new_id, original);
    assert_eq!((corrected["status"].as_str(), corrected["corrects"].as_str()), (Some("ok"), Some(original.as_str())));
    let before = desk.get_json(&format!("/api/v1/tickets/{original}")).await;
    assert_eq!(before["superseded_by"].as_str(), Some(new_id.as_str()));
    let product = desk.get_json("/api/v1/products/IZ8z").await;
    assert_eq!((product["name"].as_str(), product["times_seen"].as_i64()), (Some("Café"), Some(1)));
    assert_eq!(twice.status(), 409, "a ticket is corrected once");
    assert_eq!(desk.post(&format!("/api/v1/tickets/{}/correction", Uuid::now_v7()), "x").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_eight_corrections_of_one_ticket_sent_at_once_one_is_stored_and_seven_are_refused() {
    // No unique index on `corrects` on partitioned tables: the rule is kept
    // by the correction's lock on the original row, on both schemas.
    let desk = spawn_desk().await;
    let original = desk.ingest(INVALID_TICKET).await;
    let path = format!("/api/v1/tickets/{original}/correction");

    let mut requests = Vec::new();
    for _ in 0..8 {
        let request = desk.client.post(format!("{}{path}", desk.base)).bearer_auth(ALICE_SECRET).body(SAMPLE_TICKET);
        requests.push(tokio::spawn(request.send()));
    }
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("task").expect("sent").status().as_u16());
    }

    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    let corrections: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets WHERE corrects = $1::uuid")
        .bind(&original)
        .fetch_one(&desk.app.db)
        .await
        .expect("count");
    assert_eq!(corrections, 1);
    let superseded_by: Option<Uuid> = sqlx::query_scalar("SELECT superseded_by FROM tickets WHERE id = $1::uuid")
        .bind(&original)
        .fetch_one(&desk.app.db)
        .await
        .expect("original");
    let correction: Uuid = sqlx::query_scalar("SELECT id FROM tickets WHERE corrects = $1::uuid")
        .bind(&original)
        .fetch_one(&desk.app.db)
        .await
        .expect("correction");
    assert_eq!(superseded_by, Some(correction));
}

#[tokio::test]
async fn a_product_posted_at_two_prices_under_two_names_has_all_of_them_in_its_history() {
    let desk = spawn_desk().await;
    let ticket = |order: u64, name: &str, price: &str| {
        format!("Order: {order}\nVAT: 0.10\nTotal: {price}\n\nproduct,product_id,price\n{name},ESP1,{price}\n")
    };
    desk.ingest(ticket(1, "Espresso", "1.20")).await;
    desk.ingest(ticket(2, "Espresso", "1.20")).await;
    desk.ingest(ticket(3, "Espresso", "1.40")).await;
    desk.ingest(ticket(4, "Espresso serré", "1.40")).await;

    let product = desk.get_json("/api/v1/products/ESP1").await;

    let mut seen: Vec<(String, String, i64)> = product["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|row| {
            let name = row["name"].as_str().expect("name").to_string();
            let price = row["price"].as_str().expect("price").to_string();
            (name, price, row["times_seen"].as_i64().expect("count"))
        })
        .collect();
    seen.sort();
    let expected = [("Espresso", "1.20", 2), ("Espresso", "1.40", 1), ("Espresso serré", "1.40", 1)]
        .map(|(name, price, count)| (name.to_string(), price.to_string(), count));
    assert_eq!(seen, expected, "{product}");
    assert_eq!((product["name"].as_str(), product["price"].as_str()), (Some("Espresso serré"), Some("1.40")));
}

#[tokio::test]
async fn products_are_listed_searched_and_shown_with_their_history() {
    let desk = spawn_desk().await;
    desk.ingest(SAMPLE_TICKET).await;
    sqlx::query(
        "INSERT INTO product_history (product_id, name, price, first_seen_at, last_seen_at, times_seen)
         SELECT 'IZ8z', 'Petit café', 1.50, now() - interval '30 days', now() - interval '20 days', 4
         WHERE NOT EXISTS (SELECT 1 FROM product_history WHERE product_id = 'IZ8z' AND name = 'Petit café')",
    )
    .execute(&desk.app.db)
    .await
    .expect("history");

    let first_page = desk.get_json("/api/v1/products?limit=1").await;
    let next = first_page["next"].as_str().expect("a second page").to_string();
    let second_page = desk.get_json(&format!("/api/v1/products?limit=1&after={next}")).await;
    let found = desk.get_json("/api/v1/products?q=CAF").await;
    let wildcard = desk.get_json("/api/v1/products?q=%25").await;
    let product = desk.get_json("/api/v1/products/IZ8z").await;

    assert_eq!(first_page["products"][0]["product_id"], "IZ8z", "by product id: uppercase first");
    assert_eq!(second_page["products"][0]["product_id"], "aZde");
    assert_eq!(second_page["next"], Value::Null);
    assert_eq!(found["products"].as_array().map(Vec::len), Some(1));
    assert_eq!(found["products"][0]["name"], "Café");
    assert_eq!(wildcard["products"].as_array().map(Vec::len), Some(0), "% is taken literally");
    assert_eq!((product["price"].as_str(), product["times_seen"].as_i64()), (Some("2.00"), Some(1)));
    let history = product["history"].as_array().expect("history");
    assert!(history.iter().any(|version| version["name"] == "Petit café" && version["price"] == "1.50"), "{history:?}");
    assert_eq!(desk.get("/api/v1/products/nope").await.status(), 404);
}

#[tokio::test]
async fn stats_count_tickets_by_status_and_problem_code() {
    let desk = spawn_desk().await;
    desk.ingest(SAMPLE_TICKET).await;
    desk.ingest(PARTIAL_TICKET).await;
    desk.ingest(PARTIAL_TICKET).await;
    desk.ingest(INVALID_TICKET).await;

    let stats = desk.get_json("/api/v1/stats?window=1h").await;

    assert_eq!(stats["total"], 4);
    assert_eq!(stats["by_status"], serde_json::json!({ "ok": 1, "partial": 2, "invalid": 1 }));
    assert_eq!(stats["by_problem"]["bad_price"], 2);
    assert_eq!(stats["by_problem"]["total_mismatch"], 2);
    assert_eq!(desk.get("/api/v1/stats?window=2h").await.status(), 400);
}

#[tokio::test]
async fn the_stats_are_counted_once_for_every_caller_within_ten_seconds() {
    let desk = spawn_desk().await;
    desk.ingest(SAMPLE_TICKET).await;
    let first = desk.get_json("/api/v1/stats?window=24h").await;
    desk.ingest(SAMPLE_TICKET).await;

    // 20 more looks, a ticket later.
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(desk.get_json("/api/v1/stats?window=24h").await);
    }
    let hour = desk.get_json("/api/v1/stats?window=1h").await;

    assert_eq!(first["total"], 1);
    for answer in &answers {
        assert_eq!(answer, &first, "the same counts, computed once");
    }
    assert_eq!(hour["total"], 2, "each window has its own counts");
}

#[tokio::test]
async fn the_console_does_not_start_without_tokens() {
    let app = spawn_app_with(|settings| settings.admin_tokens = Default::default()).await;
    assert!(app.admin_address.is_none());

    let output = Command::new(env!("CARGO_BIN_EXE_ticket-ingest"))
        .args(["console", "--config", "/dev/null"])
        .env("TICKET_INGEST_DATABASE_URL", &app.database_url)
        .env("TICKET_INGEST_ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env_remove("TICKET_INGEST_ADMIN_TOKENS")
        .output()
        .expect("runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no admin_tokens configured"), "{stderr}");
}

#[tokio::test]
async fn ticket_ingest_console_serves_the_api_alone() {
    let database_url = fresh_database().await;
    let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
    ticket_ingest::store::migrate(&pool).await.expect("migrations");
    let address = format!("127.0.0.1:{}", free_port());
    let log = temp_dir("console").join("console.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ticket-ingest"))
        .args(["console", "--config", "/dev/null"])
        .env("TICKET_INGEST_DATABASE_URL", &database_url)
        .env("TICKET_INGEST_ADMIN_LISTEN", &address)
        // One comma-separated string from a secret store.
        .env("TICKET_INGEST_ADMIN_TOKENS", format!("alice:{ALICE_SECRET},bob:{BOB_SECRET}"))
        .env("TICKET_INGEST_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
        .spawn()
        .expect("start ticket-ingest console");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("http://{address}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "console did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let alice = client.get(format!("http://{address}/api/v1/tickets")).bearer_auth(ALICE_SECRET).send().await;
    let bob = client.get(format!("http://{address}/api/v1/session")).bearer_auth(BOB_SECRET).send().await;
    let nobody = client.get(format!("http://{address}/api/v1/tickets")).send().await;
    let overview = client.get(format!("http://{address}/")).bearer_auth(ALICE_SECRET).send().await;
    let _ = child.kill();
    let _ = child.wait();

    let alice = alice.expect("sent");
    assert_eq!(alice.status(), 200);
    assert_eq!(alice.json::<Value>().await.expect("JSON")["tickets"], serde_json::json!([]));
    assert_eq!(bob.expect("sent").json::<Value>().await.expect("JSON")["name"], "bob");
    assert_eq!(nobody.expect("sent").status(), 401);
    let overview = overview.expect("sent").text().await.expect("text");
    assert!(overview.contains("Live numbers are not available"), "{overview}");
}

#[tokio::test]
async fn the_overview_counts_by_status_and_problem_and_shows_the_live_queue_inside_serve() {
    let desk = spawn_desk().await;
    desk.ingest(SAMPLE_TICKET).await;
    desk.ingest(PARTIAL_TICKET).await;
    desk.ingest(INVALID_TICKET).await;

    let response = desk.get("/?window=1h").await;

    assert_eq!(response.status(), 200);
    let page = response.text().await.expect("text");
    assert!(page.contains("<table id=\"live\">") && page.contains("writer queue depth"), "{page}");
    assert!(page.contains("href=\"/tickets?status=invalid\">invalid</a></td><td class=\"num\">1<"), "{page}");
    assert!(page.contains("href=\"/tickets?problem=bad_price\">bad_price</a></td><td class=\"num\">1<"), "{page}");
    assert!(page.contains("<strong>0.05</strong> tickets a minute"), "3 tickets in 60 minutes: {page}");
    assert_eq!(desk.get("/?window=2h").await.status(), 400);
}

#[tokio::test]
async fn stored_text_is_escaped_in_pages() {
    let desk = spawn_desk().await;
    let hostile = "Order: <script>window.__xss=1</script>\nVAT: 0.30\nTotal: 1.00\n\nproduct,product_id,price\n\
                   <script>window.__xss=1</script>,XSS1,1.00\n";
    let id = desk.ingest(hostile).await;
    let cookie = desk.log_in().await;

    for path in
        [format!("/tickets/{id}"), "/tickets".to_string(), "/products?q=XSS".to_string(), "/products/XSS1".to_string()]
    {
        let page =
            desk.client.get(format!("{}{path}", desk.base)).header("cookie", &cookie).send().await.expect("sent");

        assert_eq!(page.status(), 200, "{path}");
        assert!(page.headers()["content-security-policy"].to_str().expect("ASCII").contains("default-src 'none'"));
        let text = page.text().await.expect("text");
        assert!(text.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"), "{path}: {text}");
        assert!(!text.contains("<script>window"), "{path}: {text}");
    }
    let unknown = desk
        .client
        .get(format!("{}/tickets/%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E", desk.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown.status(), 404);
    assert!(unknown.headers()["content-type"].to_str().expect("ASCII").starts_with("text/html"));
    assert!(!unknown.text().await.expect("text").contains("<script"));
}

#[tokio::test]
async fn a_review_form_without_its_csrf_token_is_refused_and_with_it_redirects_back() {
    let desk = spawn_desk().await;
    let id = desk.ingest(INVALID_TICKET).await;
    let cookie = desk.log_in().await;
    let page = desk.client.get(format!("{}/tickets/{id}", desk.base)).header("cookie", &cookie).send().await;
    let page = page.expect("sent").text().await.expect("text");
    let marker = "name=\"csrf_token\" value=\"";
    let start = page.find(marker).expect("the form carries the CSRF token") + marker.len();
    let csrf = &page[start..start + page[start..].find('"').expect("closing quote")];
    let url = format!("{}/tickets/{id}/review", desk.base);
    let form = |csrf: &str| format!("csrf_token={csrf}&decision=rejected&note=junk");

    let without = desk.client.post(&url).header("cookie", &cookie).body("decision=rejected").send().await;
    let forged = desk.client.post(&url).header("cookie", &cookie).body(form("forged")).send().await;
    let with = desk.client.post(&url).header("cookie", &cookie).body(form(csrf)).send().await.expect("sent");

    assert_eq!(without.expect("sent").status(), 403);
    assert_eq!(forged.expect("sent").status(), 403);
    assert_eq!(with.status(), 303);
    assert_eq!(with.headers()["location"].to_str().expect("ASCII"), format!("/tickets/{id}?done=rejected"));
    let ticket = desk.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(
        (ticket["reviews"][0]["decision"].as_str(), ticket["reviews"][0]["note"].as_str()),
        (Some("rejected"), Some("junk"))
    );
}

#[tokio::test]
async fn a_body_that_is_not_text_is_shown_as_a_hex_dump() {
    let desk = spawn_desk().await;
    let id = desk.ingest(vec![b'O', b'r', 0xff, 0xfe, 0x00, b'<', b's', b'>']).await;

    let page = desk.get(&format!("/tickets/{id}")).await.text().await.expect("text");

    assert!(page.contains("<pre id=\"hex\">00000000  4f 72 ff fe 00 3c 73 3e"), "{page}");
    assert!(page.contains("|Or...&lt;s&gt;|"), "{page}");
    assert!(!page.contains("id=\"raw\""), "{page}");
}

#[tokio::test]
async fn with_a_read_database_the_desk_reads_there_and_writes_to_database_url() {
    let replica = spawn_app_with(|settings| settings.ack = AckMode::Commit).await;
    let on_the_replica_only = replica.post_ticket(SAMPLE_TICKET).await.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let replica_url = replica.database_url.clone();
    let app = spawn_app_with(|settings| {
        settings.ack = AckMode::Commit;
        settings.admin_tokens = admin_tokens(&[format!("alice:{ALICE_SECRET}")]);
        settings.read_database_url = Some(parsed_url(&replica_url));
    })
    .await;
    let base = app.admin_address.clone().expect("the console runs when it has tokens");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let desk = Desk { app, base, client };

    let written_by_the_desk_host = desk.ingest(INVALID_TICKET).await;
    let listed = desk.get_json("/api/v1/tickets").await;
    let review = desk
        .post_json(
            &format!("/api/v1/tickets/{written_by_the_desk_host}/review"),
            &serde_json::json!({ "decision": "rejected" }),
        )
        .await;

    assert_eq!(ids(&listed), [on_the_replica_only], "listings come from read_database_url");
    assert_eq!(review.status(), 201, "a review is written to database_url, where the ticket is");
    let reviews: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ticket_reviews").fetch_one(&desk.app.db).await.expect("count");
    assert_eq!(reviews, 1);
    let reviews_on_replica: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ticket_reviews").fetch_one(&replica.db).await.expect("count");
    assert_eq!(reviews_on_replica, 0);
}
