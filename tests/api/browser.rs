//! Browser tests: pages read the way a person reads them, in a real headless
//! Chromium driven through WebDriver.
//!
//! # The harness
//! [`Browser::start`] starts Debian's `chromedriver` on a free port of
//! 127.0.0.1, in a process group of its own, waits until its `/status`
//! says ready, and opens a WebDriver session (fantoccini) on a headless
//! Chromium with a fresh profile (`--user-data-dir`) and a 1280×900 window.
//! Dropping the [`Browser`] kills that process group (chromedriver and every
//! Chromium process it started) and deletes the profile, so a failing test
//! leaves no process behind (only chromedriver's log, whose path it prints);
//! [`Browser::close`] ends the session first. Screenshots stay.
//!
//! Chromium runs with `--disable-background-networking`,
//! `--disable-component-update` and `--disable-sync`: without them it keeps
//! reaching for Google's hosts, and on a machine without a route out those
//! connections are refused, many at a time.
//!
//! The helpers panic with the page's URL when something is missing: a test
//! reads as a list of steps, and a failure says where the browser was.
//!
//! # Script injection
//! A hostile value in a test carries a payload that leaves a trace when it
//! runs: it sets `window.__xss` (`<script>window.__xss=1</script>`,
//! `"><img src=x onerror="window.__xss=1">`) or opens an alert.
//! [`Browser::alerts_or_injected_markers`] lists the traces on the current
//! page; a test asserts the list is empty. The session leaves alerts open
//! (`unhandledPromptBehavior: ignore`) so that none is dismissed before it is
//! looked for.
//!
//! # Tools
//! `chromedriver` from `$PATH` (or `CHROMEDRIVER`) and Chromium at
//! `/usr/bin/chromium` (or `CHROMIUM`): Debian's `chromium-driver` and
//! `chromium`, which `scripts/test.sh` installs when run as root. Without
//! them the browser tests fail, naming the packages.
//!
//! # Self-test
//! The review desk's pages are driven in `console_pages.rs`. The test at
//! the end of this file drives a page server of its own (login form,
//! HttpOnly cookie, an escaped hostile value) and the service's `/ping`,
//! which shows the harness itself works end to end, and that its detector
//! catches a payload that does run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value as Json};

use crate::helpers::{free_port, temp_dir};

/// How long a helper waits for an element or a page before it fails.
const WAIT: Duration = Duration::from_secs(10);
/// How long chromedriver may take to answer `/status` after it starts.
const DRIVER_START: Duration = Duration::from_secs(20);
/// The browser window, in CSS pixels.
const WINDOW: (u32, u32) = (1280, 900);

const INSTALL_HINT: &str = "install Debian's chromium and chromium-driver \
    (scripts/test.sh does when run as root: apt-get install chromium chromium-driver)";

/// A headless Chromium behind its own chromedriver.
pub struct Browser {
    /// The WebDriver session.
    client: Client,
    /// The chromedriver process group and the browser profile; killed and
    /// deleted on drop.
    driver: Driver,
    /// Where [`Browser::screenshot`] writes; kept after the test for
    /// post-mortems.
    screenshots: PathBuf,
}

/// chromedriver, started in a process group of its own so that killing the
/// group also ends the Chromium processes it started.
struct Driver {
    /// The chromedriver process, leader of its process group.
    child: Child,
    /// The WebDriver endpoint, `http://127.0.0.1:PORT`.
    url: String,
    /// Chromium's `--user-data-dir`, fresh for this browser.
    profile: PathBuf,
    /// chromedriver's own log (`--log-path`), quoted when it fails to start.
    log: PathBuf,
}

impl Browser {
    /// Starts chromedriver and opens a session with headless Chromium.
    pub async fn start() -> Browser {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
        assert!(Path::new(&chromium).exists(), "{chromium} is missing: {INSTALL_HINT}");
        let driver = Driver::start().await;
        let capabilities = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "timeouts": { "pageLoad": WAIT.as_millis() as u64, "script": WAIT.as_millis() as u64 },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                    format!("--user-data-dir={}", driver.profile.display()),
                ],
            },
        });
        let Json::Object(capabilities) = capabilities else { unreachable!("a JSON object literal") };
        let client =
            match ClientBuilder::new(HttpConnector::new()).capabilities(capabilities).connect(&driver.url).await {
                Ok(client) => client,
                Err(error) => panic!("no WebDriver session with {chromium}: {error}\n{}", driver.log_tail()),
            };
        let browser = Browser { client, driver, screenshots: temp_dir("screenshots") };
        browser.size_viewport().await;
        browser
    }

    /// Ends the session, then chromedriver and its browser.
    pub async fn close(self) {
        let Browser { client, driver, screenshots: _ } = self;
        if let Err(error) = client.close().await {
            eprintln!("closing the WebDriver session: {error}");
        }
        drop(driver);
    }

    /// The WebDriver session, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Loads `url` and waits until the page has loaded.
    pub async fn goto(&self, url: &str) {
        if let Err(error) = self.client.goto(url).await {
            panic!("GET {url} in the browser: {error}");
        }
    }

    /// The address of the page shown.
    pub async fn current_url(&self) -> String {
        self.client.current_url().await.map(String::from).unwrap_or_else(|error| format!("(unknown URL: {error})"))
    }

    /// The rendered text of the first element matching `css`, as a person
    /// sees it (what CSS hides is left out), once it is there.
    pub async fn text_of(&self, css: &str) -> String {
        let element = self.wait_for(css).await;
        match element.text().await {
            Ok(text) => text,
            Err(error) => panic!("text of {css} on {}: {error}", self.current_url().await),
        }
    }

    /// Clicks the first element matching `css`, once it is there. Does not
    /// wait for a page the click may load: read an element of that page next
    /// ([`Browser::text_of`] waits for it).
    pub async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        if let Err(error) = element.click().await {
            panic!("click on {css} on {}: {error}", self.current_url().await);
        }
    }

    /// Types `text` into the field matching `css`, after clearing it.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        let typed = match element.clear().await {
            Ok(()) => element.send_keys(text).await,
            Err(error) => Err(error),
        };
        if let Err(error) = typed {
            panic!("typing into {css} on {}: {error}", self.current_url().await);
        }
    }

    /// Submits the form matching `form_css` the way a person does, by
    /// clicking its submit button (`button` without a type, `button` or
    /// `input` of type `submit`), and waits until the answer's page has
    /// loaded.
    pub async fn submit(&self, form_css: &str) {
        let form = self.wait_for(form_css).await;
        let button = match form.find(Locator::Css("button:not([type]), button[type=submit], input[type=submit]")).await
        {
            Ok(button) => button,
            Err(error) => panic!("no submit button in {form_css} on {}: {error}", self.current_url().await),
        };
        let before = self.current_url().await;
        self.mark_page().await;
        if let Err(error) = button.click().await {
            panic!("submitting {form_css} on {before}: {error}");
        }
        self.wait_for_new_page(&before).await;
    }

    /// Saves a PNG of the window as `name` (`.png` added if missing) in this
    /// browser's screenshot directory, and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(error) => panic!("screenshot of {}: {error}", self.current_url().await),
        };
        let mut path = self.screenshots.join(name);
        if path.extension() != Some(std::ffi::OsStr::new("png")) {
            path.set_extension("png");
        }
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot of {}: {}", self.current_url().await, path.display());
        path
    }

    /// The document as it stands now (scripts' changes included), serialized.
    pub async fn dump_dom(&self) -> String {
        match self.client.source().await {
            Ok(html) => html,
            Err(error) => panic!("the DOM of {}: {error}", self.current_url().await),
        }
    }

    /// Runs `script` (a function body: `return …` gives the value) in the page.
    pub async fn execute(&self, script: &str) -> Json {
        match self.client.execute(script, Vec::new()).await {
            Ok(value) => value,
            Err(error) => panic!("script on {}: {error}\n{script}", self.current_url().await),
        }
    }

    /// Every trace of an injected script on the current page: an open alert
    /// (its text; dismissed, so the page can be read on), and
    /// `window.__xss` when set. Empty when no payload ran.
    pub async fn alerts_or_injected_markers(&self) -> Vec<String> {
        let mut found = Vec::new();
        // Each script's alert is its own dialog: read them all.
        while let Ok(text) = self.client.get_alert_text().await {
            found.push(format!("an alert is open: {text:?}"));
            if self.client.dismiss_alert().await.is_err() || found.len() > 20 {
                break;
            }
        }
        let marker = self.execute("return window.__xss === undefined ? null : String(window.__xss);").await;
        if let Json::String(value) = marker {
            found.push(format!("window.__xss = {value}"));
        }
        found
    }

    /// Grows the window by what headless Chromium counts as its frame, so
    /// that pages and screenshots get the whole [`WINDOW`].
    async fn size_viewport(&self) {
        let frame =
            self.execute("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];");
        let frame = frame.await;
        let extra = |index: usize| frame[index].as_u64().and_then(|pixels| u32::try_from(pixels).ok()).unwrap_or(0);
        if let Err(error) = self.client.set_window_size(WINDOW.0 + extra(0), WINDOW.1 + extra(1)).await {
            panic!("resizing the window to a {}x{} viewport: {error}", WINDOW.0, WINDOW.1);
        }
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it.
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(error) => panic!("no element matches {css} on {} after {WAIT:?}: {error}", self.current_url().await),
        }
    }

    /// Marks the current document, so that [`Browser::wait_for_new_page`]
    /// can tell when another one replaced it.
    async fn mark_page(&self) {
        self.execute("window.__harness_old_page = true;").await;
    }

    /// Waits until the marked document is gone and its successor has loaded.
    async fn wait_for_new_page(&self, before: &str) {
        let deadline = Instant::now() + WAIT;
        let loaded = "return window.__harness_old_page === undefined && document.readyState === 'complete';";
        loop {
            // An error here is the navigation under way: try again.
            let answer: Result<Json, CmdError> = self.client.execute(loaded, Vec::new()).await;
            if matches!(answer, Ok(Json::Bool(true))) {
                return;
            }
            assert!(Instant::now() < deadline, "no new page after {before} within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Driver {
    async fn start() -> Driver {
        let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_string());
        let dir = temp_dir("chromedriver");
        let profile = dir.join("profile");
        let log = dir.join("chromedriver.log");
        // A free port may be taken between the check and the start: retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let mut command = Command::new(&chromedriver);
            command
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!("cannot start {chromedriver}: {error}: {INSTALL_HINT}");
                }
            };
            let mut driver =
                Driver { child, url: format!("http://127.0.0.1:{port}"), profile: profile.clone(), log: log.clone() };
            match driver.wait_until_ready().await {
                Ok(()) => return driver,
                Err(why) if attempt < 3 => {
                    eprintln!("chromedriver on port {port}: {why}; trying another port");
                    drop(driver);
                }
                Err(why) => panic!("chromedriver did not start: {why}\n{}", driver.log_tail()),
            }
        }
    }

    /// Polls `/status` until it says ready; an error when chromedriver exits
    /// or takes longer than [`DRIVER_START`].
    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client");
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status})"));
            }
            if let Ok(response) = client.get(format!("{}/status", self.url)).send().await {
                if let Ok(body) = response.json::<Json>().await {
                    if body["value"]["ready"] == Json::Bool(true) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not answer ready within {DRIVER_START:?}", self.url));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of chromedriver's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("--- last lines of {}:\n{tail}", self.log.display())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test: chromedriver's log stays for the post-mortem.
            let _ = std::fs::remove_dir_all(&self.profile);
            eprintln!("chromedriver's log: {}", self.log.display());
        } else if let Some(dir) = self.profile.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Self-test of the harness: a page server of the test's own and the
// service's /ping. Not a model of the console (console_pages.rs drives the
// real one): only enough of one for the browser to log in and read a value.
// ---------------------------------------------------------------------------

mod self_test {
    use std::convert::Infallible;
    use std::path::Path;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::Browser;
    use crate::helpers::spawn_app;

    const TOKEN: &str = "desk-token-7f3a";
    const SESSION_COOKIE: &str = "desk_session=s3ss10n";
    /// Each payload leaves a trace when it runs (see the module docs).
    const HOSTILE: &str =
        r#"<script>window.__xss=1</script> "><img src=x onerror="window.__xss=1"> '><img src=x onerror=alert(1)>"#;

    /// The five characters that matter in HTML text and quoted attributes.
    fn escape(text: &str) -> String {
        let mut escaped = String::with_capacity(text.len());
        for character in text.chars() {
            match character {
                '&' => escaped.push_str("&amp;"),
                '<' => escaped.push_str("&lt;"),
                '>' => escaped.push_str("&gt;"),
                '"' => escaped.push_str("&quot;"),
                '\'' => escaped.push_str("&#39;"),
                other => escaped.push(other),
            }
        }
        escaped
    }

    fn page(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
        let html = format!(
            "<!doctype html><html><head><meta charset=utf-8><title>desk</title></head><body>{body}</body></html>"
        );
        let mut response = Response::new(Full::new(Bytes::from(html)));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, "text/html; charset=utf-8".parse().expect("header value"));
        response
    }

    /// `/` the login form; `/login?token=…&next=/…` sets the HttpOnly
    /// session cookie and redirects to `next`; `/tickets` says whether the
    /// cookie came back and shows [`HOSTILE`] escaped, in text and in an
    /// attribute; `/unsafe` shows it raw, for the harness to catch.
    async fn serve(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let signed_in = request
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|cookies| cookies.split(';').any(|cookie| cookie.trim() == SESSION_COOKIE));
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
        let param = |name: &str| query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
        let response = match request.uri().path() {
            "/" => page(
                StatusCode::OK,
                r#"<form id="login" action="/login" method="get">
                     <label>Token <input name="token" type="password"></label>
                     <input type="hidden" name="next" value="/tickets">
                     <button>Sign in</button>
                   </form>"#,
            ),
            "/login" if param("token") == Some(TOKEN) => {
                let next = param("next").filter(|next| next.starts_with('/') && !next.starts_with("//"));
                let mut response = page(StatusCode::SEE_OTHER, "");
                let headers = response.headers_mut();
                headers.insert(LOCATION, next.unwrap_or("/tickets").parse().expect("header value"));
                let cookie = format!("{SESSION_COOKIE}; Path=/; HttpOnly; SameSite=Strict");
                headers.insert(SET_COOKIE, cookie.parse().expect("header value"));
                response
            }
            "/login" => page(StatusCode::UNAUTHORIZED, r#"<p id="status">wrong token</p>"#),
            "/tickets" if signed_in => page(
                StatusCode::OK,
                &format!(
                    r#"<p id="status">signed in</p>
                       <table><tr><th>Note</th><td id="note">{0}</td></tr></table>
                       <input id="echo" value="{0}">"#,
                    escape(HOSTILE)
                ),
            ),
            "/tickets" => {
                page(StatusCode::OK, r#"<p id="status">not signed in</p><a id="sign-in" href="/">Sign in</a>"#)
            }
            "/unsafe" => page(StatusCode::OK, &format!(r#"<p id="status">unsafe</p><p>{HOSTILE}</p>"#)),
            _ => page(StatusCode::NOT_FOUND, "not found"),
        };
        Ok(response)
    }

    /// Serves [`serve`] on 127.0.0.1:0 until dropped.
    struct PageServer {
        address: String,
        task: JoinHandle<()>,
    }

    impl PageServer {
        async fn start() -> PageServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the page server");
            let address = format!("http://{}", listener.local_addr().expect("local address"));
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(serve);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            PageServer { address, task }
        }
    }

    impl Drop for PageServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_browser_signs_in_with_an_httponly_cookie_and_shows_a_hostile_value_as_text() {
        // Arrange
        let app = spawn_app().await;
        let pages = PageServer::start().await;
        let browser = Browser::start().await;

        // Act & Assert: the service itself, in the browser.
        browser.goto(&format!("{}/ping", app.address)).await;
        assert_eq!(browser.text_of("body").await, "Pong");

        // Signed out, then signed in through the form.
        browser.goto(&format!("{}/tickets", pages.address)).await;
        assert_eq!(browser.text_of("#status").await, "not signed in");
        browser.click("#sign-in").await;
        browser.fill("#login input[name=token]", TOKEN).await;
        browser.submit("#login").await;
        assert_eq!(browser.current_url().await, format!("{}/tickets", pages.address));
        assert_eq!(browser.text_of("#status").await, "signed in");
        let script_sees = browser.execute("return document.cookie;").await;
        assert_eq!(script_sees, "", "the session cookie is HttpOnly: scripts must not read it");
        let cookie = browser.client().get_named_cookie("desk_session").await.expect("the session cookie");
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site().map(|same_site| same_site.to_string()).as_deref(), Some("Strict"));

        // The hostile value, shown as text, never run.
        assert_eq!(browser.text_of("#note").await, HOSTILE);
        assert_eq!(browser.execute("return document.querySelector('#echo').value;").await, HOSTILE);
        let dom = browser.dump_dom().await;
        assert!(dom.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"), "escaped in the DOM:\n{dom}");
        assert_eq!(browser.alerts_or_injected_markers().await, Vec::<String>::new());
        let screenshot = browser.screenshot("signed-in").await;
        let png = std::fs::read(&screenshot).expect("read the screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "{}", screenshot.display());
        assert_eq!(dimensions(&screenshot), (1280, 900));

        // The detector itself: the same value unescaped is caught.
        browser.goto(&format!("{}/unsafe", pages.address)).await;
        let traces = browser.alerts_or_injected_markers().await;
        assert!(traces.iter().any(|trace| trace == "window.__xss = 1"), "{traces:?}");
        assert!(traces.iter().any(|trace| trace.contains("alert")), "{traces:?}");

        browser.close().await;
        app.stop().await;
    }

    /// A PNG's width and height, from its IHDR chunk.
    fn dimensions(png: &Path) -> (u32, u32) {
        let bytes = std::fs::read(png).expect("read the PNG");
        let number = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"));
        (number(16), number(20))
    }
}
