//! POSTs each task to a URL: the handler of `sluice-worker --http-post`.
//!
//! The request's body is the payload; its headers name the task
//! (`Sluice-Task-Id`, the same on every attempt, so a receiver can use it
//! to deduplicate; `Sluice-Queue`, `Sluice-Attempt`, `Sluice-Group`) and
//! carry the producer's headers as `Sluice-Header-<name>`. The answer
//! decides the task's fate ([`outcome`], a pure function):
//!
//! | answer                         | outcome                                 |
//! |--------------------------------|-----------------------------------------|
//! | 2xx                            | ack, the body (up to 1 MiB) as result   |
//! | 429, 503                       | [`Outcome::Throttled`] (the queue) for  |
//! |                                | Retry-After, 1 s without one; none when |
//! |                                | it is already over: a plain retry       |
//! | other 4xx                      | dead letter: the request itself is bad  |
//! | other 5xx, 1xx/3xx, no answer  | retry after the queue's backoff         |
//!
//! Redirects are not followed: a POST redirected elsewhere would be sent
//! again (or turned into a GET) behind the operator's back.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tracing::{debug, warn};

use crate::runtime::MAX_THROTTLE;
use crate::{Error, Outcome, Task, Throttle};

/// Results longer than this are cut (the broker's default payload limit).
pub const MAX_RESULT_BYTES: usize = crate::command::MAX_RESULT_BYTES;

/// How much of an error answer's body goes into the nack's error text.
pub const ERROR_BODY_BYTES: usize = 512;

/// The wait of a 429 or 503 that says nothing usable in Retry-After.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where and how to POST tasks. Cheap to share: one connection pool for
/// every task of the worker.
#[derive(Debug, Clone)]
pub struct HttpPost {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
}

impl HttpPost {
    /// A poster to `url` (http or https), each request bounded by
    /// `timeout` from connecting to the answer's last byte.
    pub fn new(url: &str, timeout: Duration) -> Result<HttpPost, Error> {
        let url = Url::parse(url).map_err(|e| Error::Config(format!("--http-post {url}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "--http-post {url}: only http:// and https:// URLs are supported"
            )));
        }
        if timeout.is_zero() {
            return Err(Error::Config("--timeout must be more than 0".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Below the keep-alive of common servers (Node's is 5 s): a POST
            // on a connection the server is closing fails, and costs the
            // task an attempt.
            .pool_idle_timeout(Duration::from_secs(4))
            .user_agent(concat!("sluice-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(HttpPost {
            client,
            url,
            timeout,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// POSTs one task and turns the answer into its outcome.
    pub async fn run(&self, task: Task) -> Outcome {
        let request = self
            .client
            .post(self.url.clone())
            .headers(request_headers(&task))
            .body(task.payload);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::retry(self.describe(&e)),
        };
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER).cloned();
        // Only what the outcome keeps is read: a huge error page is not.
        let limit = if status.is_success() {
            MAX_RESULT_BYTES
        } else {
            ERROR_BODY_BYTES
        };
        let mut body = BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        if status.is_success() {
                            warn!(task = %task.id, limit, "result cut at the limit");
                        }
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                // The status is the answer; a body cut short by a timeout or
                // a lost connection is only a shorter result (re-running a
                // task the service said it did would be worse).
                Err(e) => {
                    warn!(task = %task.id, %status, error = %self.describe(&e), "answer's body cut short");
                    break;
                }
            }
        }
        outcome(
            status,
            retry_after.as_ref(),
            body.freeze(),
            SystemTime::now(),
        )
    }

    /// A failed request in a line: what failed, down to the cause.
    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!(
                "POST {}: no answer within {}",
                self.url,
                humantime::format_duration(self.timeout)
            );
        }
        let mut text = format!("POST {}: {}", self.url, e);
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let s_text = s.to_string();
            // hyper and the OS repeat each other's words.
            if !text.ends_with(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        text
    }
}

/// The headers of a task's request. A task header whose name or value
/// cannot be an HTTP header is left out (logged), never a failure: the
/// payload still goes.
pub fn request_headers(task: &Task) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&task.id) {
        headers.insert("sluice-task-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&task.queue) {
        headers.insert("sluice-queue", v);
    }
    headers.insert("sluice-attempt", HeaderValue::from(task.attempt));
    if !task.group.is_empty() {
        match HeaderValue::from_bytes(task.group.as_bytes()) {
            Ok(v) => {
                headers.insert("sluice-group", v);
            }
            Err(_) => debug!(task = %task.id, "group is no valid header value; not sent"),
        }
    }
    for (name, value) in &task.headers {
        let name_ok = HeaderName::from_bytes(format!("sluice-header-{name}").as_bytes());
        match (name_ok, HeaderValue::from_bytes(value.as_bytes())) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => debug!(task = %task.id, header = %name, "not a valid HTTP header; not sent"),
        }
    }
    headers
}

/// What an answer means for its task (see the module's table). `body` is
/// the answer's body as read (at most [`MAX_RESULT_BYTES`]); `now` is when
/// it came, to turn a Retry-After date into a wait.
pub fn outcome(
    status: StatusCode,
    retry_after: Option<&HeaderValue>,
    body: Bytes,
    now: SystemTime,
) -> Outcome {
    if status.is_success() {
        let mut result = body;
        result.truncate(MAX_RESULT_BYTES);
        return Outcome::Ack { result };
    }
    let error = status_error(status, &body);
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        let wait = retry_after_wait(retry_after.map(HeaderValue::as_bytes), now);
        if wait.is_zero() {
            // Its moment has passed: nothing to hold, a plain retry.
            return Outcome::retry(error);
        }
        return Outcome::Throttled {
            error,
            retry_after: wait,
            scope: Throttle::Queue,
        };
    }
    if status.is_client_error() {
        Outcome::DeadLetter { error }
    } else {
        Outcome::retry(error)
    }
}

/// "HTTP 404: <the body's first 512 bytes>" (just "HTTP 404" without a
/// body).
fn status_error(status: StatusCode, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)]);
    let body = body.trim();
    if body.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {body}", status.as_u16())
    }
}

/// How long a Retry-After asks to wait: delta-seconds ("120") or an
/// HTTP date (zero once it has passed); [`DEFAULT_RETRY_AFTER`] when
/// missing or unreadable. At most [`MAX_THROTTLE`].
pub fn retry_after_wait(value: Option<&[u8]>, now: SystemTime) -> Duration {
    let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return DEFAULT_RETRY_AFTER;
    };
    let text = text.trim();
    let wait = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits too many for a u64 are still "a very long time".
        Duration::from_secs(text.parse().unwrap_or(u64::MAX))
    } else if let Ok(at) = httpdate::parse_http_date(text) {
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        DEFAULT_RETRY_AFTER
    };
    wait.min(MAX_THROTTLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date.
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn answer(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
        let status = StatusCode::from_u16(status).expect("status");
        let retry_after = retry_after.map(|v| HeaderValue::from_str(v).expect("header"));
        outcome(
            status,
            retry_after.as_ref(),
            Bytes::from(body.to_owned()),
            now(),
        )
    }

    fn throttled(error: &str, secs: u64) -> Outcome {
        Outcome::Throttled {
            error: error.into(),
            retry_after: Duration::from_secs(secs),
            scope: Throttle::Queue,
        }
    }

    #[test]
    fn a_2xx_acks_with_the_body_as_result() {
        for status in [200, 201, 202, 204] {
            let body = if status == 204 { "" } else { "done" };
            assert_eq!(
                answer(status, None, body),
                Outcome::Ack {
                    result: Bytes::from(body)
                },
                "{status}"
            );
        }
        let big = "x".repeat(MAX_RESULT_BYTES + 10);
        match answer(200, None, &big) {
            Outcome::Ack { result } => assert_eq!(result.len(), MAX_RESULT_BYTES),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_429_or_503_throttles_the_queue_for_its_retry_after_seconds() {
        assert_eq!(
            answer(429, Some("3"), "slow down"),
            throttled("HTTP 429: slow down", 3)
        );
        assert_eq!(answer(503, Some(" 120 "), ""), throttled("HTTP 503", 120));
    }

    #[test]
    fn a_retry_after_date_is_a_wait_until_then() {
        assert_eq!(
            answer(429, Some("Sun, 06 Nov 1994 08:49:47 GMT"), ""),
            throttled("HTTP 429", 10)
        );
        // The two obsolete forms HTTP still asks receivers to read.
        assert_eq!(
            answer(503, Some("Sunday, 06-Nov-94 08:50:37 GMT"), ""),
            throttled("HTTP 503", 60)
        );
        assert_eq!(
            answer(503, Some("Sun Nov  6 08:49:39 1994"), ""),
            throttled("HTTP 503", 2)
        );
    }

    #[test]
    fn a_retry_after_already_over_is_a_plain_retry() {
        for past in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "0",
        ] {
            assert_eq!(
                answer(429, Some(past), "busy"),
                Outcome::retry("HTTP 429: busy"),
                "{past}"
            );
        }
    }

    #[test]
    fn no_or_garbage_retry_after_waits_a_second() {
        assert_eq!(answer(429, None, ""), throttled("HTTP 429", 1));
        for garbage in ["soon", "-5", "1.5", "", "Sun, 06 Nov 1994", "0x10"] {
            assert_eq!(
                answer(503, Some(garbage), ""),
                throttled("HTTP 503", 1),
                "{garbage:?}"
            );
        }
        // Not UTF-8 at all.
        let v = HeaderValue::from_bytes(b"\xff\xfe").expect("obs-text");
        assert_eq!(
            retry_after_wait(Some(v.as_bytes()), now()),
            DEFAULT_RETRY_AFTER
        );
    }

    #[test]
    fn a_huge_retry_after_is_cut_to_the_brokers_24_hours() {
        assert_eq!(
            answer(429, Some("99999999999999999999999"), ""),
            throttled("HTTP 429", 86_400)
        );
        assert_eq!(
            answer(429, Some("Fri, 31 Dec 9999 23:59:59 GMT"), ""),
            throttled("HTTP 429", 86_400)
        );
    }

    #[test]
    fn another_4xx_dead_letters_with_the_status_and_the_start_of_the_body() {
        assert_eq!(
            answer(400, None, "bad input\n"),
            Outcome::DeadLetter {
                error: "HTTP 400: bad input".into()
            }
        );
        assert_eq!(
            answer(404, Some("5"), ""),
            Outcome::DeadLetter {
                error: "HTTP 404".into()
            },
            "Retry-After only counts on 429 and 503"
        );
        let long = "é".repeat(400); // 800 bytes: cut inside a character
        match answer(422, None, &long) {
            Outcome::DeadLetter { error } => {
                assert!(error.starts_with("HTTP 422: éé"), "{error}");
                assert!(error.len() <= "HTTP 422: ".len() + ERROR_BODY_BYTES + 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_statuses_retry_with_the_queues_backoff() {
        assert_eq!(answer(500, None, "oops"), Outcome::retry("HTTP 500: oops"));
        assert_eq!(answer(502, Some("5"), ""), Outcome::retry("HTTP 502"));
        assert_eq!(answer(504, None, ""), Outcome::retry("HTTP 504"));
        assert_eq!(answer(301, None, ""), Outcome::retry("HTTP 301"));
    }

    #[test]
    fn headers_carry_the_task_and_skip_what_http_cannot() {
        let task = Task {
            id: "00ab".into(),
            queue: "q".into(),
            attempt: 3,
            payload: Bytes::new(),
            headers: [
                ("trace-id".to_owned(), "abc".to_owned()),
                ("bad name".to_owned(), "x".to_owned()),
                ("bad-value".to_owned(), "a\nb".to_owned()),
                ("utf8".to_owned(), "né".to_owned()),
            ]
            .into(),
            priority: 0,
            enqueued_at_unix_ms: 0,
            group: "tenant-1".into(),
        };
        let h = request_headers(&task);
        let get = |n: &str| h.get(n).map(|v| v.as_bytes().to_vec());
        assert_eq!(get("Sluice-Task-Id"), Some(b"00ab".to_vec()));
        assert_eq!(get("Sluice-Queue"), Some(b"q".to_vec()));
        assert_eq!(get("Sluice-Attempt"), Some(b"3".to_vec()));
        assert_eq!(get("Sluice-Group"), Some(b"tenant-1".to_vec()));
        assert_eq!(get("Sluice-Header-Trace-Id"), Some(b"abc".to_vec()));
        assert_eq!(get("Sluice-Header-utf8"), Some("né".as_bytes().to_vec()));
        assert_eq!(get("sluice-header-bad-value"), None);
        assert_eq!(h.len(), 7, "{h:?}");

        let plain = Task {
            group: String::new(),
            headers: Default::default(),
            ..task
        };
        assert_eq!(request_headers(&plain).get("sluice-group"), None);
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(HttpPost::new("http://127.0.0.1:8080/hook", Duration::from_secs(1)).is_ok());
        assert!(HttpPost::new("https://example.test/", Duration::from_secs(1)).is_ok());
        for bad in ["ftp://example.test/", "not a url", "127.0.0.1:8080"] {
            assert!(HttpPost::new(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
        assert!(HttpPost::new("http://127.0.0.1/", Duration::ZERO).is_err());
    }

    fn task() -> Task {
        Task {
            id: "t".into(),
            queue: "q".into(),
            attempt: 1,
            payload: Bytes::from_static(b"x"),
            headers: Default::default(),
            priority: 0,
            enqueued_at_unix_ms: 0,
            group: String::new(),
        }
    }

    /// A real request to a port nobody listens on: a retry saying why.
    #[tokio::test]
    async fn no_answer_retries_with_the_reason() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let post = HttpPost::new(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5))
            .expect("poster");
        match post.run(task()).await {
            Outcome::Retry { error, delay: None } => {
                assert!(error.starts_with("POST http://127.0.0.1:"), "{error}");
                assert!(error.to_lowercase().contains("refused"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A service that takes the request and never answers: a retry once
    /// the timeout is up.
    #[tokio::test]
    async fn a_request_past_the_timeout_retries() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.expect("accept");
            std::future::pending::<()>().await;
            drop(conn);
        });
        let post =
            HttpPost::new(&format!("http://{addr}/"), Duration::from_millis(200)).expect("poster");
        let started = std::time::Instant::now();
        match post.run(task()).await {
            Outcome::Retry { error, delay: None } => {
                assert!(error.ends_with("no answer within 200ms"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        silent.abort();
    }
}
