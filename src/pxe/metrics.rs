//! Prometheus metrics of `girder pxe`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DhcpLabel {
    /// DISCOVER, OFFER, REQUEST, ACK, NAK, RELEASE, DECLINE, INFORM, other.
    message: &'static str,
    /// `received` or `sent`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabel {
    route: &'static str,
    code: u16,
}

pub struct PxeMetrics {
    registry: Registry,
    dhcp_messages: Family<DhcpLabel, Counter>,
    dhcp_ignored: Family<ReasonLabel, Counter>,
    tftp_transfers: Family<ResultLabel, Counter>,
    tftp_bytes: Counter,
    http_requests: Family<HttpLabel, Counter>,
    http_bytes: Counter,
    enrolments: Family<ResultLabel, Counter>,
    api_connections: Family<ResultLabel, Counter>,
}

impl Default for PxeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("girder_pxe");
        let dhcp_messages = Family::<DhcpLabel, Counter>::default();
        let dhcp_ignored = Family::<ReasonLabel, Counter>::default();
        let tftp_transfers = Family::<ResultLabel, Counter>::default();
        let tftp_bytes = Counter::default();
        let http_requests = Family::<HttpLabel, Counter>::default();
        let http_bytes = Counter::default();
        let enrolments = Family::<ResultLabel, Counter>::default();
        let api_connections = Family::<ResultLabel, Counter>::default();
        registry.register("dhcp_messages", "DHCP messages by type and direction", dhcp_messages.clone());
        registry.register("dhcp_ignored", "DHCP requests not answered, by reason", dhcp_ignored.clone());
        registry.register("tftp_transfers", "TFTP read requests by result", tftp_transfers.clone());
        registry.register("tftp_sent_bytes", "File bytes sent over TFTP", tftp_bytes.clone());
        registry.register("http_requests", "HTTP requests by route and status code", http_requests.clone());
        registry.register("http_sent_bytes", "Body bytes sent over HTTP for assets", http_bytes.clone());
        registry.register("agent_enrolments", "Agent token exchanges by result", enrolments.clone());
        registry.register(
            "api_connections",
            "Connections passed through to the API server, by result",
            api_connections.clone(),
        );
        Self {
            registry,
            dhcp_messages,
            dhcp_ignored,
            tftp_transfers,
            tftp_bytes,
            http_requests,
            http_bytes,
            enrolments,
            api_connections,
        }
    }
}

impl PxeMetrics {
    pub fn dhcp_received(&self, message: &'static str) {
        self.dhcp_messages.get_or_create(&DhcpLabel { message, direction: "received" }).inc();
    }

    pub fn dhcp_sent(&self, message: &'static str) {
        self.dhcp_messages.get_or_create(&DhcpLabel { message, direction: "sent" }).inc();
    }

    pub fn dhcp_ignored(&self, reason: &'static str) {
        self.dhcp_ignored.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// One TFTP read request ended: `complete`, `not_found`, `refused`, `timeout`, `error`.
    pub fn tftp_transfer(&self, result: &'static str, bytes: u64) {
        self.tftp_transfers.get_or_create(&ResultLabel { result }).inc();
        self.tftp_bytes.inc_by(bytes);
    }

    pub fn http_request(&self, route: &'static str, code: u16) {
        self.http_requests.get_or_create(&HttpLabel { route, code }).inc();
    }

    pub fn http_sent(&self, bytes: u64) {
        self.http_bytes.inc_by(bytes);
    }

    /// One agent token exchange ended: `issued`, `pending`, `refused`, `error`.
    pub fn enrolment(&self, result: &'static str) {
        self.enrolments.get_or_create(&ResultLabel { result }).inc();
    }

    /// One connection passed through to the API server: `opened` or `failed`.
    pub fn api_connection(&self, result: &'static str) {
        self.api_connections.get_or_create(&ResultLabel { result }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
