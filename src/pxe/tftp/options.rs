//! Option negotiation (RFC 2347): blksize (RFC 2348), tsize and timeout (RFC 2349),
//! windowsize (RFC 7440). Unknown options and invalid values are left out of the OACK,
//! which RFC 2347 allows; the client then uses the RFC 1350 defaults for them.

use std::time::Duration;

pub const DEFAULT_BLKSIZE: u16 = 512;
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;

/// What the server is willing to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
}

/// The parameters of one transfer once negotiation is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub blksize: u16,
    pub windowsize: u16,
    /// The retransmission timeout the client asked for, if any.
    pub timeout: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self { blksize: DEFAULT_BLKSIZE, windowsize: 1, timeout: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiation {
    pub settings: Settings,
    /// The OACK options in request order; empty means no OACK (plain RFC 1350 transfer).
    pub accepted: Vec<(&'static str, String)>,
}

/// Decides the options of a read request. `tsize` is the size to report, `None` when it
/// is not known up front (netascii).
pub fn negotiate(requested: &[(&str, &str)], limits: Limits, tsize: Option<u64>) -> Negotiation {
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    let max_windowsize = limits.max_windowsize.max(1);
    let mut settings = Settings::default();
    let mut accepted: Vec<(&'static str, String)> = Vec::new();
    for (name, value) in requested {
        let Some(name) = known_name(name) else { continue };
        // A repeated option counts once, the first time.
        if accepted.iter().any(|(seen, _)| *seen == name) {
            continue;
        }
        let Some(number) = decimal(value) else { continue };
        match name {
            "blksize" if (u64::from(MIN_BLKSIZE)..=u64::from(MAX_BLKSIZE)).contains(&number) => {
                let granted = u16::try_from(number).unwrap_or(MAX_BLKSIZE).min(max_blksize);
                settings.blksize = granted;
                accepted.push((name, granted.to_string()));
            }
            "windowsize" if (1..=65535).contains(&number) => {
                let granted = u16::try_from(number).unwrap_or(u16::MAX).min(max_windowsize);
                settings.windowsize = granted;
                accepted.push((name, granted.to_string()));
            }
            "timeout" if (1..=255).contains(&number) => {
                settings.timeout = Some(Duration::from_secs(number));
                accepted.push((name, number.to_string()));
            }
            // On a read request the client sends 0 and the server answers with the size.
            "tsize" => {
                if let Some(size) = tsize {
                    accepted.push((name, size.to_string()));
                }
            }
            _ => {}
        }
    }
    Negotiation { settings, accepted }
}

fn known_name(name: &str) -> Option<&'static str> {
    ["blksize", "tsize", "timeout", "windowsize"].into_iter().find(|known| known.eq_ignore_ascii_case(name))
}

/// Plain decimal digits only (no sign, no spaces), as the RFCs write the values.
fn decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits for u64 is simply invalid.
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_blksize: 1468, max_windowsize: 64 };

    fn accepted(requested: &[(&str, &str)], tsize: Option<u64>) -> Vec<(&'static str, String)> {
        negotiate(requested, LIMITS, tsize).accepted
    }

    #[test]
    fn no_options_means_rfc_1350_defaults_and_no_oack() {
        let negotiation = negotiate(&[], LIMITS, Some(10));
        assert_eq!(negotiation.settings, Settings { blksize: 512, windowsize: 1, timeout: None });
        assert!(negotiation.accepted.is_empty());
    }

    #[test]
    fn all_options_granted_in_request_order() {
        let requested = [("tsize", "0"), ("blksize", "1428"), ("windowsize", "8"), ("timeout", "3")];
        let negotiation = negotiate(&requested, LIMITS, Some(1_048_576));
        assert_eq!(
            negotiation.settings,
            Settings { blksize: 1428, windowsize: 8, timeout: Some(Duration::from_secs(3)) }
        );
        let expected: Vec<(&str, String)> = vec![
            ("tsize", "1048576".into()),
            ("blksize", "1428".into()),
            ("windowsize", "8".into()),
            ("timeout", "3".into()),
        ];
        assert_eq!(negotiation.accepted, expected);
    }

    #[test]
    fn large_values_are_capped_at_the_configured_maximum() {
        let negotiation = negotiate(&[("blksize", "65464"), ("windowsize", "65535")], LIMITS, None);
        assert_eq!((negotiation.settings.blksize, negotiation.settings.windowsize), (1468, 64));
        assert_eq!(negotiation.accepted, vec![("blksize", "1468".to_string()), ("windowsize", "64".to_string())]);
    }

    #[test]
    fn limits_out_of_the_rfc_range_are_clamped() {
        let odd = Limits { max_blksize: 2, max_windowsize: 0 };
        let negotiation = negotiate(&[("blksize", "1024"), ("windowsize", "4")], odd, None);
        assert_eq!((negotiation.settings.blksize, negotiation.settings.windowsize), (8, 1));
    }

    #[test]
    fn invalid_values_are_left_out() {
        for (name, value) in [
            ("blksize", "7"),
            ("blksize", "65465"),
            ("blksize", "-1"),
            ("blksize", "+512"),
            ("blksize", " 512"),
            ("blksize", ""),
            ("blksize", "99999999999999999999999"),
            ("windowsize", "0"),
            ("windowsize", "65536"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("tsize", "x"),
        ] {
            let negotiation = negotiate(&[(name, value)], LIMITS, Some(5));
            assert!(negotiation.accepted.is_empty(), "{name}={value:?} should be left out");
            assert_eq!(negotiation.settings, Settings::default(), "{name}={value:?}");
        }
    }

    #[test]
    fn boundaries_are_accepted() {
        assert_eq!(accepted(&[("blksize", "8")], None), vec![("blksize", "8".to_string())]);
        assert_eq!(accepted(&[("timeout", "1")], None), vec![("timeout", "1".to_string())]);
        assert_eq!(accepted(&[("timeout", "255")], None), vec![("timeout", "255".to_string())]);
        assert_eq!(accepted(&[("windowsize", "1")], None), vec![("windowsize", "1".to_string())]);
    }

    #[test]
    fn unknown_options_ignored_names_case_insensitive_first_wins() {
        let requested = [("multicast", ""), ("BlkSize", "1024"), ("blksize", "512"), ("rollover", "0")];
        assert_eq!(accepted(&requested, None), vec![("blksize", "1024".to_string())]);
    }

    #[test]
    fn tsize_needs_a_known_size() {
        assert!(accepted(&[("tsize", "0")], None).is_empty());
        assert_eq!(accepted(&[("tsize", "0")], Some(0)), vec![("tsize", "0".to_string())]);
    }
}
