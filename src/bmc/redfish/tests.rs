//! The driver against a **local fake Redfish service** (axum, in process).
//!
//! Why a fake here: sushy-tools, the real peer of `tests/redfish.rs`, has no
//! SessionService, sends no ETags and never answers `503`. What only a real
//! BMC does, session create / reuse / re-login / delete, `Retry-After`,
//! `If-Match`, is proven here against this fake, which implements just those
//! parts of the Redfish protocol and counts what it sees.

use super::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap as AxHeaders, Method as AxMethod, StatusCode as AxStatus, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USER: &str = "admin";
const PASSWORD: &str = "pa55-Not-In-Logs";

struct FakeState {
    offer_sessions: bool,
    /// Session id -> token.
    sessions: BTreeMap<u64, String>,
    next_session: u64,
    sessions_created: u32,
    sessions_deleted: u32,
    basic_requests: u32,
    /// The next N requests to the system answer 503 with this Retry-After.
    busy: u32,
    retry_after: Option<&'static str>,
    requests_to_system: u32,
    power: String,
    resets: Vec<String>,
    reset_allowed: Option<Vec<&'static str>>,
    etag: u64,
    /// Bump the ETag just before the next PATCH, as if someone else wrote.
    race_next_patch: bool,
    /// How the BMC compares `If-Match` with its (weak) ETag.
    if_match: IfMatch,
    /// Refuse (400) a boot override target the system does not list.
    validate_targets: bool,
    patches: Vec<(Option<String>, Value)>,
    boot: Value,
    /// Extra fields of the system resource, and other resources by path.
    system_extra: Value,
    resources: BTreeMap<String, Value>,
    /// Simulated BMC slowness, to observe the concurrency limit.
    delay: Duration,
    in_flight: u32,
    max_in_flight: u32,
}

impl Default for FakeState {
    fn default() -> Self {
        Self {
            offer_sessions: true,
            sessions: BTreeMap::new(),
            next_session: 1,
            sessions_created: 0,
            sessions_deleted: 0,
            basic_requests: 0,
            busy: 0,
            retry_after: None,
            requests_to_system: 0,
            power: "Off".into(),
            resets: Vec::new(),
            reset_allowed: None,
            etag: 1,
            race_next_patch: false,
            if_match: IfMatch::Weak,
            validate_targets: false,
            patches: Vec::new(),
            boot: json!({"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideMode": "UEFI", "BootSourceOverrideEnabled": "Disabled"}),
            system_extra: json!({}),
            resources: BTreeMap::new(),
            delay: Duration::ZERO,
            in_flight: 0,
            max_in_flight: 0,
        }
    }
}

/// How a BMC checks `If-Match` against the weak ETag `W/"N"` it gives.
#[derive(Clone, Copy, PartialEq)]
enum IfMatch {
    /// The opaque tags compared, weak or not (most BMCs).
    Weak,
    /// Strong comparison: a weak tag never matches, `"N"` does.
    Strong,
    /// Any `If-Match` fails; a PATCH without one is taken.
    Broken,
}

type Shared = Arc<Mutex<FakeState>>;

struct Fake {
    state: Shared,
    port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Fake {
    async fn start(setup: impl FnOnce(&mut FakeState)) -> Self {
        let mut state = FakeState::default();
        setup(&mut state);
        let state = Arc::new(Mutex::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { state, port, server }
    }

    fn address(&self) -> BmcAddress {
        BmcAddress::parse(&format!("redfish+http://127.0.0.1:{}", self.port)).unwrap()
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    async fn connect(&self, password: &str) -> Result<RedfishClient, BmcError> {
        self.connect_with(password, BmcOptions::default()).await
    }

    async fn connect_with(&self, password: &str, options: BmcOptions) -> Result<RedfishClient, BmcError> {
        RedfishClient::connect(self.address(), Credentials::new(USER, password), options).await
    }
}

fn json_reply(status: AxStatus, body: Value) -> Response {
    (status, [("Content-Type", "application/json")], body.to_string()).into_response()
}

fn redfish_error(status: AxStatus, message: &str) -> Response {
    json_reply(status, json!({"error": {"code": "Base.1.0.GeneralError", "message": message}}))
}

async fn handle(State(state): State<Shared>, method: AxMethod, uri: Uri, headers: AxHeaders, body: Bytes) -> Response {
    let delay = {
        let mut s = state.lock().unwrap();
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        s.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = route(&mut state.lock().unwrap(), &method, uri.path(), &headers, &body);
    state.lock().unwrap().in_flight -= 1;
    response
}

fn route(s: &mut FakeState, method: &AxMethod, path: &str, headers: &AxHeaders, body: &[u8]) -> Response {
    let path = path.trim_end_matches('/');
    const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
    const SYSTEM: &str = "/redfish/v1/Systems/1";

    if path == "/redfish/v1" {
        let mut root = json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}, "RedfishVersion": "1.15.0"});
        if s.offer_sessions {
            root["SessionService"] = json!({"@odata.id": "/redfish/v1/SessionService"});
            root["Links"] = json!({"Sessions": {"@odata.id": SESSIONS}});
        }
        return json_reply(AxStatus::OK, root);
    }
    if path == SESSIONS && method == AxMethod::POST {
        if !s.offer_sessions {
            return redfish_error(AxStatus::NOT_FOUND, "no such resource");
        }
        let login: Value = serde_json::from_slice(body).unwrap_or_default();
        if login["UserName"] != USER || login["Password"] != PASSWORD {
            return redfish_error(AxStatus::UNAUTHORIZED, "wrong user name or password");
        }
        let id = s.next_session;
        s.next_session += 1;
        let token = format!("tok-{id}-f00dfeed");
        s.sessions.insert(id, token.clone());
        s.sessions_created += 1;
        return (
            AxStatus::CREATED,
            [
                ("X-Auth-Token", token),
                ("Location", format!("{SESSIONS}/{id}")),
                ("Content-Type", "application/json".into()),
            ],
            json!({"@odata.id": format!("{SESSIONS}/{id}"), "UserName": USER}).to_string(),
        )
            .into_response();
    }

    // Everything else needs credentials.
    let token_ok =
        headers.get("X-Auth-Token").and_then(|t| t.to_str().ok()).is_some_and(|t| s.sessions.values().any(|v| v == t));
    let basic_ok = headers
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|b| b == format!("{USER}:{PASSWORD}").as_bytes());
    if basic_ok {
        s.basic_requests += 1;
    }
    if !token_ok && !basic_ok {
        return redfish_error(AxStatus::UNAUTHORIZED, "authentication required");
    }

    if path == SESSIONS && method == AxMethod::GET {
        let members: Vec<Value> =
            s.sessions.keys().map(|id| json!({"@odata.id": format!("{SESSIONS}/{id}")})).collect();
        return json_reply(AxStatus::OK, json!({"Members": members, "Members@odata.count": members.len()}));
    }
    if let Some(id) = path.strip_prefix(&format!("{SESSIONS}/"))
        && method == AxMethod::DELETE
    {
        let id: u64 = id.parse().unwrap_or(0);
        return if s.sessions.remove(&id).is_some() {
            s.sessions_deleted += 1;
            AxStatus::NO_CONTENT.into_response()
        } else {
            redfish_error(AxStatus::NOT_FOUND, "no such session")
        };
    }
    if path == "/redfish/v1/Systems" {
        return json_reply(AxStatus::OK, json!({"Members": [{"@odata.id": SYSTEM}]}));
    }
    if path == SYSTEM {
        s.requests_to_system += 1;
        if s.busy > 0 {
            s.busy -= 1;
            let mut response = redfish_error(AxStatus::SERVICE_UNAVAILABLE, "busy");
            if let Some(after) = s.retry_after {
                response.headers_mut().insert("Retry-After", after.parse().unwrap());
            }
            return response;
        }
        if *method == AxMethod::PATCH {
            if s.race_next_patch {
                s.race_next_patch = false;
                s.etag += 1;
            }
            let if_match = headers.get("If-Match").and_then(|v| v.to_str().ok()).map(str::to_string);
            let patch: Value = serde_json::from_slice(body).unwrap_or_default();
            s.patches.push((if_match.clone(), patch.clone()));
            let current = format!("\"{}\"", s.etag);
            let matches = match (s.if_match, if_match.as_deref()) {
                (_, None) => true,
                (IfMatch::Weak, Some(tag)) => tag.trim_start_matches("W/") == current,
                (IfMatch::Strong, Some(tag)) => tag == current,
                (IfMatch::Broken, Some(_)) => false,
            };
            if !matches {
                return redfish_error(AxStatus::PRECONDITION_FAILED, "ETag mismatch");
            }
            let allowed = s.boot["BootSourceOverrideTarget@Redfish.AllowableValues"].as_array().cloned();
            if s.validate_targets
                && let (Some(allowed), Some(target)) = (allowed, patch["Boot"].get("BootSourceOverrideTarget"))
                && !allowed.contains(target)
            {
                return redfish_error(AxStatus::BAD_REQUEST, "BootSourceOverrideTarget: value not allowed");
            }
            if let Some(boot) = patch["Boot"].as_object() {
                for (k, v) in boot {
                    s.boot[k] = v.clone();
                }
            }
            s.etag += 1;
            return AxStatus::NO_CONTENT.into_response();
        }
        let mut system = json!({
            "@odata.id": SYSTEM, "Id": "1", "PowerState": s.power, "Boot": s.boot,
            "Actions": {"#ComputerSystem.Reset": {"target": format!("{SYSTEM}/Actions/ComputerSystem.Reset")}},
            "Oem": {"Contoso": {"Anything": [1, {"x": null}]}}
        });
        if let Some(allowed) = &s.reset_allowed {
            system["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] = json!(allowed);
        }
        if let Some(extra) = s.system_extra.as_object() {
            for (k, v) in extra {
                system[k] = v.clone();
            }
        }
        let mut response = json_reply(AxStatus::OK, system);
        response.headers_mut().insert("ETag", format!("W/\"{}\"", s.etag).parse().unwrap());
        return response;
    }
    if path == format!("{SYSTEM}/Actions/ComputerSystem.Reset") && method == AxMethod::POST {
        let reset: Value = serde_json::from_slice(body).unwrap_or_default();
        let kind = reset["ResetType"].as_str().unwrap_or_default().to_string();
        s.resets.push(kind.clone());
        let target = match kind.as_str() {
            "On" | "ForceOn" | "ForceRestart" | "PowerCycle" | "GracefulRestart" => "On",
            // The button toggles.
            "PushPowerButton" if s.power == "Off" => "On",
            _ => "Off",
        };
        // Like an iDRAC: powering on what is on is an error.
        if (kind == "On" && s.power == "On") || (kind == "ForceOff" && s.power == "Off") {
            return redfish_error(AxStatus::CONFLICT, "already in that state");
        }
        s.power = target.into();
        return AxStatus::NO_CONTENT.into_response();
    }
    match s.resources.get(path) {
        Some(Value::Null) => redfish_error(AxStatus::INTERNAL_SERVER_ERROR, "not implemented"),
        Some(resource) => json_reply(AxStatus::OK, resource.clone()),
        None => redfish_error(AxStatus::NOT_FOUND, "no such resource"),
    }
}

/// Waits for a condition on the fake, polling; fails after `within`.
async fn eventually(fake: &Fake, within: Duration, what: &str, cond: impl Fn(&FakeState) -> bool) {
    let deadline = Instant::now() + within;
    while !fake.with(|s| cond(s)) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn one_session_is_created_reused_and_deleted_on_close() {
    let fake = Fake::start(|_| {}).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    assert_eq!(client.auth_mode(), AuthMode::Session);
    assert_eq!(client.system_path(), "/redfish/v1/Systems/1");
    for _ in 0..3 {
        assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    }
    client.identity().await.unwrap();
    fake.with(|s| {
        assert_eq!(s.sessions_created, 1, "one session for all calls");
        assert_eq!(s.sessions.len(), 1);
        assert_eq!(s.basic_requests, 0, "no basic auth while a session is open");
    });

    client.close().await.unwrap();
    fake.with(|s| {
        assert!(s.sessions.is_empty(), "close() leaves no session open");
        assert_eq!(s.sessions_deleted, 1);
    });
    client.close().await.unwrap();
    assert_eq!(client.auth_mode(), AuthMode::None);
    fake.with(|s| assert_eq!(s.sessions_deleted, 1, "a second close() is a no-op"));

    // Still usable after close: it logs in again, and closes again.
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    client.close().await.unwrap();
    fake.with(|s| {
        assert_eq!((s.sessions_created, s.sessions_deleted), (2, 2));
        assert!(s.sessions.is_empty());
    });
}

#[tokio::test]
async fn a_session_the_bmc_dropped_is_replaced_once() {
    let fake = Fake::start(|_| {}).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    // The BMC forgets every session (reboot, idle timeout).
    fake.with(|s| s.sessions.clear());
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    fake.with(|s| {
        assert_eq!(s.sessions_created, 2, "logged in again after the 401");
        assert_eq!(s.sessions.len(), 1);
    });
    client.close().await.unwrap();
    fake.with(|s| assert!(s.sessions.is_empty()));
}

#[tokio::test]
async fn concurrent_calls_after_a_dropped_session_log_in_only_once() {
    let fake = Fake::start(|_| {}).await;
    let options = BmcOptions { max_concurrent_requests: 4, ..Default::default() };
    let client = Arc::new(fake.connect_with(PASSWORD, options).await.unwrap());
    fake.with(|s| s.sessions.clear());
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.power_state().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    fake.with(|s| {
        assert_eq!(s.sessions_created, 2, "one re-login, not one per task");
        assert_eq!(s.sessions.len(), 1);
    });
    client.close().await.unwrap();
    fake.with(|s| assert!(s.sessions.is_empty()));
}

#[tokio::test]
async fn a_client_dropped_without_close_deletes_its_session() {
    let fake = Fake::start(|_| {}).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    fake.with(|s| assert_eq!(s.sessions.len(), 1));
    drop(client);
    eventually(&fake, Duration::from_secs(10), "session deleted after drop", |s| {
        s.sessions.is_empty() && s.sessions_deleted == 1
    })
    .await;
}

#[tokio::test]
async fn a_failed_connect_leaves_no_session() {
    // Logged in, but the system named in the address does not exist.
    let fake = Fake::start(|_| {}).await;
    let address =
        BmcAddress::parse(&format!("redfish+http://127.0.0.1:{}/redfish/v1/Systems/nope", fake.port)).unwrap();
    let err =
        RedfishClient::connect(address, Credentials::new(USER, PASSWORD), BmcOptions::default()).await.unwrap_err();
    assert_eq!(err.reason(), "SystemNotFound", "{err}");
    assert!(err.to_string().contains("/redfish/v1/Systems/1"), "lists the choices: {err}");
    fake.with(|s| {
        assert_eq!(s.sessions_created, 1);
        assert!(s.sessions.is_empty(), "the session was deleted");
    });
}

#[tokio::test]
async fn basic_auth_where_the_bmc_offers_no_sessions() {
    let fake = Fake::start(|s| s.offer_sessions = false).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    assert_eq!(client.auth_mode(), AuthMode::Basic);
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    fake.with(|s| {
        assert!(s.basic_requests >= 2);
        assert_eq!(s.sessions_created, 0);
    });
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_that_shows_no_secret() {
    for offer_sessions in [true, false] {
        let fake = Fake::start(|s| s.offer_sessions = offer_sessions).await;
        let err = fake.connect("wrong-Pa55word").await.unwrap_err();
        assert!(err.is_auth(), "{err}");
        assert_eq!(err.reason(), "AuthenticationFailed");
        let text = format!("{err} / {err:?}");
        assert!(text.contains(&format!("127.0.0.1:{}", fake.port)), "names the BMC: {text}");
        assert!(!text.contains("wrong-Pa55word"), "{text}");
        fake.with(|s| assert!(s.sessions.is_empty()));
    }
}

#[tokio::test]
async fn debug_output_shows_neither_password_nor_token() {
    let fake = Fake::start(|_| {}).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    let token = fake.with(|s| s.sessions.values().next().cloned().unwrap());
    let text = format!("{client:?} {:#?}", client);
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(text.contains("Session"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!text.contains(&token), "{text}");
    let options =
        format!("{:?}", BmcOptions { ca_bundle: Some(b"-----BEGIN CERTIFICATE-----".to_vec()), ..Default::default() });
    assert!(!options.contains("BEGIN"), "{options}");
    client.close().await.unwrap();
}

#[tokio::test]
async fn retry_after_is_honoured_on_503() {
    let fake = Fake::start(|s| {
        s.offer_sessions = false;
        s.retry_after = Some("2");
    })
    .await;
    let client = fake.connect(PASSWORD).await.unwrap();
    let before = fake.with(|s| {
        s.busy = 1;
        s.requests_to_system
    });
    let started = Instant::now();
    assert_eq!(client.power_state().await.unwrap(), PowerState::Off);
    let waited = started.elapsed();
    // 2 s, not the 1 s the driver waits when the BMC does not say.
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    fake.with(|s| assert_eq!(s.requests_to_system - before, 2));
}

#[tokio::test]
async fn retries_on_503_are_bounded() {
    let fake = Fake::start(|s| {
        s.offer_sessions = false;
        s.retry_after = Some("0");
    })
    .await;
    let options = BmcOptions { max_retries: 2, ..Default::default() };
    let client = fake.connect_with(PASSWORD, options).await.unwrap();
    let before = fake.with(|s| {
        s.busy = 100;
        s.requests_to_system
    });
    let err = client.power_state().await.unwrap_err();
    assert!(matches!(err, BmcError::Busy { attempts: 3, .. }), "{err}");
    assert!(err.is_unreachable());
    fake.with(|s| assert_eq!(s.requests_to_system - before, 3));
}

#[tokio::test]
async fn patch_sends_if_match_and_retries_once_on_412() {
    let fake = Fake::start(|s| s.race_next_patch = true).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    client.set_boot_override(BootOverride { device: BootDevice::Pxe, mode: BootMode::Legacy }).await.unwrap();
    fake.with(|s| {
        assert_eq!(s.patches.len(), 2, "one 412, one retry");
        assert_eq!(s.patches[0].0.as_deref(), Some("W/\"1\""));
        assert_eq!(s.patches[1].0.as_deref(), Some("\"2\""), "the fresh ETag, strong");
        assert_eq!(s.boot["BootSourceOverrideTarget"], "Pxe");
        assert_eq!(s.boot["BootSourceOverrideMode"], "Legacy");
        assert_eq!(s.boot["BootSourceOverrideEnabled"], "Once");
    });
    // Mode unchanged: not sent again (some BMCs refuse to "change" it).
    client.set_boot_override(BootOverride { device: BootDevice::Cd, mode: BootMode::Legacy }).await.unwrap();
    fake.with(|s| {
        let last = &s.patches.last().unwrap().1["Boot"];
        assert_eq!(last["BootSourceOverrideTarget"], "Cd");
        assert!(last.get("BootSourceOverrideMode").is_none(), "{last}");
    });
    let err =
        client.set_boot_override(BootOverride { device: BootDevice::Http, mode: BootMode::Legacy }).await.unwrap_err();
    assert_eq!(err.reason(), "Unsupported");
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_weak_etag_compared_strongly_is_sent_strong_then_not_at_all() {
    // Gives W/"1" and compares If-Match strongly.
    let fake = Fake::start(|s| s.if_match = IfMatch::Strong).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    client.set_boot_override(BootOverride { device: BootDevice::Pxe, mode: BootMode::UEFI }).await.unwrap();
    fake.with(|s| {
        let sent: Vec<Option<&str>> = s.patches.iter().map(|p| p.0.as_deref()).collect();
        assert_eq!(sent, [Some("W/\"1\""), Some("\"1\"")]);
        assert_eq!(s.boot["BootSourceOverrideTarget"], "Pxe");
    });
    // Refuses any If-Match: the third try goes without.
    fake.with(|s| {
        s.if_match = IfMatch::Broken;
        s.patches.clear();
    });
    client.set_boot_override(BootOverride { device: BootDevice::Disk, mode: BootMode::UEFI }).await.unwrap();
    fake.with(|s| {
        let sent: Vec<Option<&str>> = s.patches.iter().map(|p| p.0.as_deref()).collect();
        assert_eq!(sent, [Some("W/\"2\""), Some("\"2\""), None]);
        assert_eq!(s.boot["BootSourceOverrideTarget"], "Hdd");
    });
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_target_refused_with_a_mode_switch_names_what_the_bmc_allows() {
    let fake = Fake::start(|s| {
        s.validate_targets = true;
        s.boot["BootSourceOverrideMode"] = json!("Legacy");
        s.boot["BootSourceOverrideTarget@Redfish.AllowableValues"] = json!(["None", "Pxe", "Cd", "Hdd", "BiosSetup"]);
    })
    .await;
    let client = fake.connect(PASSWORD).await.unwrap();
    let err =
        client.set_boot_override(BootOverride { device: BootDevice::Http, mode: BootMode::UEFI }).await.unwrap_err();
    assert_eq!(err.reason(), "Unsupported", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("UefiHttp") && text.contains("None, Pxe, Cd, Hdd, BiosSetup") && text.contains("Legacy"),
        "{text}"
    );
    // A listed target with the same switch goes through.
    client.set_boot_override(BootOverride { device: BootDevice::Pxe, mode: BootMode::UEFI }).await.unwrap();
    fake.with(|s| assert_eq!(s.boot["BootSourceOverrideMode"], "UEFI"));
    client.close().await.unwrap();
}

#[tokio::test]
async fn boot_targets_the_bmc_does_not_allow_are_refused() {
    let fake = Fake::start(|s| {
        s.boot["BootSourceOverrideTarget@Redfish.AllowableValues"] = json!(["Pxe", "Hdd"]);
    })
    .await;
    let client = fake.connect(PASSWORD).await.unwrap();
    let err =
        client.set_boot_override(BootOverride { device: BootDevice::Cd, mode: BootMode::UEFI }).await.unwrap_err();
    assert_eq!(err.reason(), "Unsupported");
    assert!(err.to_string().contains("Pxe, Hdd"), "{err}");
    fake.with(|s| assert!(s.patches.is_empty()));
    client.close().await.unwrap();
}

#[tokio::test]
async fn power_actions_map_to_what_the_bmc_offers() {
    let fake = Fake::start(|s| {
        s.reset_allowed = Some(vec!["On", "ForceOff", "GracefulShutdown", "ForceRestart"]);
    })
    .await;
    let client = fake.connect(PASSWORD).await.unwrap();
    // No PowerCycle offered: off -> On, on -> ForceRestart.
    client.power(PowerAction::PowerCycle).await.unwrap();
    client.power(PowerAction::PowerCycle).await.unwrap();
    // Already on: the BMC answers 409, which is success for the caller.
    client.power(PowerAction::On).await.unwrap();
    client.power(PowerAction::GracefulShutdown).await.unwrap();
    client.power(PowerAction::ForceOff).await.unwrap();
    fake.with(|s| {
        assert_eq!(s.resets, ["On", "ForceRestart", "On", "GracefulShutdown", "ForceOff"]);
        assert_eq!(s.power, "Off");
    });
    client.close().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_falls_back_to_what_the_bmc_offers() {
    // HPE: no GracefulShutdown, but the power button.
    let fake = Fake::start(|s| s.reset_allowed = Some(vec!["On", "ForceOff", "ForceRestart", "PushPowerButton"])).await;
    let client = fake.connect(PASSWORD).await.unwrap();
    // Off already: the button is not pressed (it would turn it on).
    client.power(PowerAction::GracefulShutdown).await.unwrap();
    fake.with(|s| assert!(s.resets.is_empty(), "{:?}", s.resets));
    fake.with(|s| s.power = "On".into());
    client.power(PowerAction::GracefulShutdown).await.unwrap();
    fake.with(|s| assert_eq!(s.resets, ["PushPowerButton"]));
    client.close().await.unwrap();
}

#[test]
fn reset_types() {
    let all: Vec<String> =
        ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"].map(String::from).to_vec();
    assert_eq!(reset_type(PowerAction::PowerCycle, Some(&all), None), Ok("PowerCycle"));
    assert_eq!(reset_type(PowerAction::PowerCycle, None, None), Ok("PowerCycle"));
    let few: Vec<String> = ["ForceOn", "ForceOff"].map(String::from).to_vec();
    assert_eq!(reset_type(PowerAction::On, Some(&few), None), Ok("ForceOn"));
    assert_eq!(reset_type(PowerAction::PowerCycle, Some(&few), Some(PowerState::Off)), Ok("ForceOn"));
    let err = reset_type(PowerAction::GracefulShutdown, Some(&few), None).unwrap_err();
    assert!(err.contains("ForceOn, ForceOff"), "{err}");
    assert!(reset_type(PowerAction::PowerCycle, Some(&few), Some(PowerState::On)).is_err());
    let restart: Vec<String> = ["PowerCycle"].map(String::from).to_vec();
    assert_eq!(reset_type(PowerAction::ForceRestart, Some(&restart), None), Ok("PowerCycle"));
    // Some Supermicro firmware runs two values together; GracefulShutdown works.
    let supermicro: Vec<String> = ["On", "ForceOff", "GracefulShutdownGracefulRestart"].map(String::from).to_vec();
    assert_eq!(reset_type(PowerAction::GracefulShutdown, Some(&supermicro), None), Ok("GracefulShutdown"));
    let hpe: Vec<String> = ["On", "ForceOff", "PushPowerButton"].map(String::from).to_vec();
    assert_eq!(reset_type(PowerAction::GracefulShutdown, Some(&hpe), None), Ok("PushPowerButton"));
}

#[test]
fn power_states() {
    assert_eq!(power_state(Some("On")), PowerState::On);
    assert_eq!(power_state(Some("off")), PowerState::Off);
    assert_eq!(power_state(Some("PoweringOn")), PowerState::PoweringOn);
    assert_eq!(power_state(Some("PoweringOff")), PowerState::PoweringOff);
    assert_eq!(power_state(Some("Paused")), PowerState::Unknown);
    assert_eq!(power_state(None), PowerState::Unknown);
}

#[tokio::test]
async fn the_concurrency_limit_holds() {
    for limit in [1, 2] {
        let fake = Fake::start(|s| {
            s.offer_sessions = false;
            s.delay = Duration::from_millis(100);
        })
        .await;
        let options = BmcOptions { max_concurrent_requests: limit, ..Default::default() };
        let client = Arc::new(fake.connect_with(PASSWORD, options).await.unwrap());
        fake.with(|s| s.max_in_flight = 0);
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.power_state().await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        // Equal, not just at most: the fake would see more if allowed.
        fake.with(|s| assert_eq!(s.max_in_flight, limit as u32));
    }
}

#[tokio::test]
async fn inventory_follows_links_and_does_without_what_is_missing() {
    let fake = Fake::start(|s| {
        s.system_extra = json!({
            "Manufacturer": "Contoso", "Model": "3500", "SerialNumber": "437XR1138R2",
            "UUID": "38947555-7742-3448-3784-823347823834", "BiosVersion": "P79 v1.45",
            "ProcessorSummary": {"Count": 2, "Model": "Multi-Core Intel(R) Xeon(R) processor 7xxx Series"},
            "MemorySummary": {"TotalSystemMemoryGiB": 96},
            "Processors": {"@odata.id": "/redfish/v1/Systems/1/Processors"},
            "EthernetInterfaces": {"@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces"},
            "Storage": {"@odata.id": "/redfish/v1/Systems/1/Storage"},
            "SimpleStorage": {"@odata.id": "/redfish/v1/Systems/1/SimpleStorage"},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/BMC"}]}
        });
        let r = &mut s.resources;
        r.insert(
            "/redfish/v1/Systems/1/Processors".into(),
            json!({"Members": [
                {"@odata.id": "/redfish/v1/Systems/1/Processors/CPU1"},
                {"@odata.id": "/redfish/v1/Systems/1/Processors/CPU2"},
                {"@odata.id": "/redfish/v1/Systems/1/Processors/broken"}
            ]}),
        );
        for cpu in ["CPU1", "CPU2"] {
            r.insert(
                format!("/redfish/v1/Systems/1/Processors/{cpu}"),
                json!({
                    "ProcessorType": "CPU", "Model": "Xeon 7xxx", "TotalCores": 8, "TotalThreads": 16,
                    "InstructionSet": "x86-64", "Oem": {"Contoso": {"Stepping": "C0"}}
                }),
            );
        }
        r.insert("/redfish/v1/Systems/1/Processors/broken".into(), Value::Null);
        r.insert(
            "/redfish/v1/Systems/1/EthernetInterfaces".into(),
            json!({
                "Members": [{"@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces/1"}],
                "Members@odata.nextLink": "/redfish/v1/Systems/1/EthernetInterfaces?page=2"
            }),
        );
        r.insert(
            "/redfish/v1/Systems/1/EthernetInterfaces/1".into(),
            json!({
                "Id": "1", "MACAddress": "12:44:6A:3B:04:11", "SpeedMbps": 1000
            }),
        );
        // Storage answers 500 (as sushy's fake driver does): SimpleStorage is used.
        r.insert("/redfish/v1/Systems/1/Storage".into(), Value::Null);
        r.insert(
            "/redfish/v1/Systems/1/SimpleStorage".into(),
            json!({
                "Members": [{"@odata.id": "/redfish/v1/Systems/1/SimpleStorage/1"}]
            }),
        );
        r.insert(
            "/redfish/v1/Systems/1/SimpleStorage/1".into(),
            json!({
                "Devices": [{"Name": "SATA Bay 1", "Model": "Contoso 8000 GB", "CapacityBytes": 8000000000000_i64}]
            }),
        );
        r.insert("/redfish/v1/Managers/BMC".into(), json!({"FirmwareVersion": "1.00"}));
    })
    .await;
    let client = fake.connect(PASSWORD).await.unwrap();
    let hw = client.inventory().await.unwrap();
    assert_eq!(hw.vendor.as_deref(), Some("Contoso"));
    assert_eq!(hw.serial_number.as_deref(), Some("437XR1138R2"));
    let cpu = hw.cpu.unwrap();
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads, cpu.architecture.as_deref()),
        (Some(2), Some(16), Some(32), Some("x86_64"))
    );
    assert_eq!(hw.memory_mebibytes, Some(96 * 1024));
    assert_eq!(hw.nics.len(), 1);
    assert_eq!(hw.nics[0].mac, "12:44:6a:3b:04:11");
    assert_eq!(hw.nics[0].speed_mbps, Some(1000));
    assert_eq!(hw.storage.len(), 1);
    assert_eq!(hw.storage[0].size_bytes, Some(8000000000000));
    let firmware = hw.firmware.unwrap();
    assert_eq!(firmware.bios.as_deref(), Some("P79 v1.45"));
    assert_eq!(firmware.bmc.as_deref(), Some("1.00"));
    let identity = client.identity().await.unwrap();
    assert_eq!(identity.uuid.as_deref(), Some("38947555-7742-3448-3784-823347823834"));
    client.close().await.unwrap();
}

#[tokio::test]
async fn describe_says_what_the_bmc_offers_and_which_quirks_girder_works_around() {
    // HPE-like: the power button instead of GracefulShutdown, a placeholder
    // UUID, weak ETags, no listed boot targets; virtual media below the
    // manager; a BIOS resource with its settings object.
    let fake = Fake::start(|s| {
        s.reset_allowed = Some(vec!["On", "ForceOff", "PushPowerButton"]);
        s.system_extra = json!({
            "Manufacturer": "HPE", "Model": "ProLiant DL360 Gen10",
            "UUID": "00000000-0000-0000-0000-000000000000",
            "Bios": {"@odata.id": "/redfish/v1/Systems/1/Bios"},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]}
        });
        let r = &mut s.resources;
        r.insert(
            "/redfish/v1/Systems/1/Bios".into(),
            json!({"Attributes": {"BootMode": "Uefi", "ProcVirtualization": "Enabled"},
                   "@Redfish.Settings": {"SettingsObject": {"@odata.id": "/redfish/v1/Systems/1/Bios/Settings"}}}),
        );
        r.insert(
            "/redfish/v1/Managers/1".into(),
            json!({"Model": "iLO 5", "FirmwareVersion": "2.78",
                   "VirtualMedia": {"@odata.id": "/redfish/v1/Managers/1/VirtualMedia"}}),
        );
        r.insert(
            "/redfish/v1/Managers/1/VirtualMedia".into(),
            json!({"Members": [{"@odata.id": "/redfish/v1/Managers/1/VirtualMedia/2"}]}),
        );
        r.insert(
            "/redfish/v1/Managers/1/VirtualMedia/2".into(),
            json!({"Id": "2", "MediaTypes": ["CD", "DVD"], "Inserted": true, "Image": "http://10.0.0.1/boot.iso",
                   "Actions": {"#VirtualMedia.InsertMedia": {"target": "/redfish/v1/Managers/1/VirtualMedia/2/Actions/VirtualMedia.InsertMedia"}}}),
        );
    })
    .await;
    let client = fake.connect(PASSWORD).await.unwrap();
    let described = client.describe().await.unwrap();
    let fact = |what: &str| -> Vec<&str> {
        described.facts.iter().filter(|(w, _)| w == what).map(|(_, v)| v.as_str()).collect()
    };
    assert_eq!(fact("system"), ["/redfish/v1/Systems/1"]);
    assert_eq!(fact("authentication"), ["a session (X-Auth-Token), deleted when girder is done"]);
    assert_eq!(fact("machine"), ["HPE ProLiant DL360 Gen10"]);
    assert_eq!(fact("reset types"), ["On, ForceOff, PushPowerButton"]);
    assert_eq!(fact("boot override"), ["Disabled to Hdd in UEFI mode"]);
    assert_eq!(fact("boot targets"), ["(not listed)"]);
    assert_eq!(fact("ETag"), ["weak (W/\"1\")"]);
    assert_eq!(
        fact("BIOS"),
        ["/redfish/v1/Systems/1/Bios: 2 attributes; pending changes go to /redfish/v1/Systems/1/Bios/Settings"]
    );
    assert_eq!(fact("manager"), ["/redfish/v1/Managers/1 iLO 5 2.78"]);
    assert_eq!(fact("virtual media"), ["2 (CD/DVD): holds http://10.0.0.1/boot.iso; InsertMedia"]);
    let quirks = described.quirks.join("\n");
    for expected in [
        "placeholder: girder reports no UUID",
        "do not list GracefulShutdown: girder sends PushPowerButton",
        "boot targets not listed",
        "weak ETags",
    ] {
        assert!(quirks.contains(expected), "{expected:?} not in:\n{quirks}");
    }
    assert!(!quirks.contains("session service"), "{quirks}");
    // Reading only: nothing was patched or reset.
    fake.with(|s| assert!(s.patches.is_empty() && s.resets.is_empty()));
    client.close().await.unwrap();
}

#[test]
fn any_body_reads_without_panicking_and_huge_numbers_saturate() {
    for body in [
        &b""[..],
        b"null",
        b"[]",
        b"{\"MemorySummary\": {\"TotalSystemMemoryGiB\": -4}, \"CapacityMiB\": 9223372036854775807, \"TotalCores\": 9223372036854775807}",
        b"{\"Members\": 7, \"Drives\": [{}], \"CapacityBytes\": -1, \"UUID\": \"00000000-0000-0000-0000-000000000000\"}",
    ] {
        let hardware = read_untrusted(body);
        assert!(hardware.memory_mebibytes.is_none_or(|m| m > 0), "{hardware:?}");
        assert!(hardware.uuid.is_none(), "{hardware:?}");
    }
}
