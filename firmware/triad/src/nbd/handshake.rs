//! Option haggling (fixed newstyle), as a pure function: one option in,
//! the bytes to send and what happens next out.
//!
//! ```text
//!  greeting sent ──client flags──▶ Haggling ──GO ok / EXPORT_NAME ok──▶ Transmission
//!                                   │   ▲
//!                                   │   └── INFO, LIST, errors, unknown options
//!                                   └── ABORT (ACK sent), EXPORT_NAME refused ──▶ Close
//! ```
//!
//! A node that is not active refuses GO/INFO/LIST with `NBD_REP_ERR_POLICY`
//! and [`NOT_ACTIVE_MESSAGE`], so clients print why (qemu and libnbd show
//! the server's message) instead of a bare connection reset. It keeps
//! answering options until the client gives up, as the spec requires of
//! a server that does not want a client; `NBD_OPT_EXPORT_NAME` cannot carry
//! an error, so there the only choice is to close.
//!
//! Must not: do I/O, or enter transmission without sending
//! `NBD_INFO_EXPORT` (GO) or the export reply (EXPORT_NAME).

use super::proto::{
    export_name_reply, info_block_size, info_export, info_name, option_reply, parse_export_name, rep_server, Geometry,
    InfoRequest, INFO_NAME, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, REP_ACK, REP_ERR_INVALID,
    REP_ERR_POLICY, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_SERVER, TRANSMISSION_FLAGS,
};

/// Message sent with every refusal by a node that is not active.
pub const NOT_ACTIVE_MESSAGE: &str = "this node is not active; connect to the VIP";

/// What the export looks like at the moment the option arrives.
#[derive(Debug, Clone, Copy)]
pub struct ExportView<'a> {
    /// The export's name; the empty name also selects it.
    pub name: &'a str,
    /// Size and block limits.
    pub geometry: Geometry,
    /// Whether this node serves the volume now.
    pub active: bool,
}

/// What the connection does after the reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next option.
    Haggle,
    /// Enter the transmission phase.
    Transmit,
    /// Close the connection (after sending `reply`, which may be empty).
    Close,
}

/// The reply bytes and the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes to send, possibly several option replies.
    pub reply: Vec<u8>,
    /// What to do after sending them.
    pub next: Next,
}

impl Outcome {
    fn one(option: u32, reply: u32, data: &[u8], next: Next) -> Self {
        Self { reply: option_reply(option, reply, data), next }
    }
}

fn selects(export: &ExportView<'_>, name: &str) -> bool {
    name.is_empty() || name == export.name
}

/// Handles one option; `no_zeroes` is the client's `NBD_FLAG_C_NO_ZEROES`.
pub fn on_option(option: u32, data: &[u8], export: &ExportView<'_>, no_zeroes: bool) -> Outcome {
    match option {
        OPT_ABORT => Outcome::one(option, REP_ACK, &[], Next::Close),
        OPT_LIST => {
            if !data.is_empty() {
                return Outcome::one(option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data", Next::Haggle);
            }
            if !export.active {
                return Outcome::one(option, REP_ERR_POLICY, NOT_ACTIVE_MESSAGE.as_bytes(), Next::Haggle);
            }
            let mut reply = option_reply(option, REP_SERVER, &rep_server(export.name));
            reply.extend(option_reply(option, REP_ACK, &[]));
            Outcome { reply, next: Next::Haggle }
        }
        OPT_INFO | OPT_GO => info_or_go(option, data, export),
        OPT_EXPORT_NAME => {
            // No way to send an error: a refusal is a hard disconnect.
            let ok = parse_export_name(data).is_ok_and(|n| selects(export, &n));
            if !ok || !export.active {
                return Outcome { reply: Vec::new(), next: Next::Close };
            }
            Outcome {
                reply: export_name_reply(export.geometry.size, TRANSMISSION_FLAGS, no_zeroes),
                next: Next::Transmit,
            }
        }
        // STARTTLS, STRUCTURED_REPLY, META_CONTEXT, EXTENDED_HEADERS and
        // anything unknown: the client falls back to what we offer.
        _ => Outcome::one(option, REP_ERR_UNSUP, b"option not supported by this server", Next::Haggle),
    }
}

fn info_or_go(option: u32, data: &[u8], export: &ExportView<'_>) -> Outcome {
    let req = match InfoRequest::parse(data) {
        Ok(r) => r,
        Err(e) => return Outcome::one(option, REP_ERR_INVALID, e.to_string().as_bytes(), Next::Haggle),
    };
    if !selects(export, &req.name) {
        return Outcome::one(option, REP_ERR_UNKNOWN, b"no export by that name", Next::Haggle);
    }
    if !export.active {
        return Outcome::one(option, REP_ERR_POLICY, NOT_ACTIVE_MESSAGE.as_bytes(), Next::Haggle);
    }
    let mut reply = option_reply(option, REP_INFO, &info_export(export.geometry.size, TRANSMISSION_FLAGS));
    // Sent even when not requested (the spec allows it): a client that did
    // not ask may still honour it, and one that ignores it gets clean
    // EINVAL replies for misaligned requests (docs/nbd.md).
    reply.extend(option_reply(option, REP_INFO, &info_block_size(&export.geometry)));
    if req.infos.contains(&INFO_NAME) {
        reply.extend(option_reply(option, REP_INFO, &info_name(export.name)));
    }
    reply.extend(option_reply(option, REP_ACK, &[]));
    let next = if option == OPT_GO { Next::Transmit } else { Next::Haggle };
    Outcome { reply, next }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{INFO_BLOCK_SIZE, OPT_REPLY_MAGIC, OPT_STARTTLS, OPT_STRUCTURED_REPLY};
    use super::*;

    fn view(active: bool) -> ExportView<'static> {
        ExportView { name: "volume", geometry: Geometry::new(1 << 20), active }
    }

    /// Splits concatenated option replies into (option, type, data).
    fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(&b[0..8], &OPT_REPLY_MAGIC.to_be_bytes());
            let opt = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
            let ty = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
            let len = u32::from_be_bytes([b[16], b[17], b[18], b[19]]) as usize;
            out.push((opt, ty, b[20..20 + len].to_vec()));
            b = &b[20 + len..];
        }
        out
    }

    fn go(name: &str, infos: Vec<u16>) -> Vec<u8> {
        InfoRequest { name: name.into(), infos }.encode()
    }

    #[test]
    fn go_on_active_node_sends_export_and_block_size_then_transmits() {
        let out = on_option(OPT_GO, &go("volume", vec![INFO_BLOCK_SIZE, INFO_NAME]), &view(true), true);
        assert_eq!(out.next, Next::Transmit);
        let r = replies(&out.reply);
        let types: Vec<_> = r.iter().map(|(o, t, d)| (*o, *t, d.get(0..2).map(<[u8]>::to_vec))).collect();
        assert_eq!(
            types,
            vec![
                (OPT_GO, REP_INFO, Some(vec![0, 0])),
                (OPT_GO, REP_INFO, Some(vec![0, 3])),
                (OPT_GO, REP_INFO, Some(vec![0, 1])),
                (OPT_GO, REP_ACK, None),
            ]
        );
        assert_eq!(r[0].2, info_export(1 << 20, TRANSMISSION_FLAGS));
    }

    #[test]
    fn info_and_default_name_stay_in_haggling() {
        let out = on_option(OPT_INFO, &go("", vec![]), &view(true), false);
        assert_eq!(out.next, Next::Haggle);
        assert_eq!(replies(&out.reply).last().map(|r| r.1), Some(REP_ACK));
    }

    #[test]
    fn standby_refuses_with_policy_and_message() {
        for opt in [OPT_GO, OPT_INFO] {
            let out = on_option(opt, &go("volume", vec![]), &view(false), false);
            assert_eq!(out.next, Next::Haggle);
            assert_eq!(replies(&out.reply), vec![(opt, REP_ERR_POLICY, NOT_ACTIVE_MESSAGE.as_bytes().to_vec())]);
        }
        let out = on_option(OPT_LIST, &[], &view(false), false);
        assert_eq!(replies(&out.reply)[0].1, REP_ERR_POLICY);
        let out = on_option(OPT_EXPORT_NAME, b"volume", &view(false), false);
        assert_eq!(out, Outcome { reply: vec![], next: Next::Close });
    }

    #[test]
    fn errors() {
        let out = on_option(OPT_GO, &go("other", vec![]), &view(true), false);
        assert_eq!(replies(&out.reply)[0].1, REP_ERR_UNKNOWN);
        let out = on_option(OPT_GO, &[0, 0, 0, 9], &view(true), false);
        assert_eq!((replies(&out.reply)[0].1, out.next), (REP_ERR_INVALID, Next::Haggle));
        let out = on_option(OPT_LIST, &[1], &view(true), false);
        assert_eq!(replies(&out.reply)[0].1, REP_ERR_INVALID);
        for opt in [OPT_STARTTLS, OPT_STRUCTURED_REPLY, 4, 10, 11, 0xdead_beef] {
            let out = on_option(opt, &[], &view(true), false);
            assert_eq!(
                replies(&out.reply),
                vec![(opt, REP_ERR_UNSUP, b"option not supported by this server".to_vec())]
            );
        }
        assert_eq!(on_option(OPT_EXPORT_NAME, b"nope", &view(true), false).next, Next::Close);
    }

    #[test]
    fn list_abort_export_name() {
        let out = on_option(OPT_LIST, &[], &view(true), false);
        assert_eq!(
            replies(&out.reply),
            vec![(OPT_LIST, REP_SERVER, rep_server("volume")), (OPT_LIST, REP_ACK, vec![])]
        );
        let out = on_option(OPT_ABORT, b"ignored", &view(false), false);
        assert_eq!((replies(&out.reply)[0].1, out.next), (REP_ACK, Next::Close));
        let out = on_option(OPT_EXPORT_NAME, b"", &view(true), true);
        assert_eq!(out.next, Next::Transmit);
        assert_eq!(out.reply, export_name_reply(1 << 20, TRANSMISSION_FLAGS, true));
    }
}
