//! NBD wire format: constants, parsers for what a client sends, builders
//! for what the server sends. Sans-IO: byte slices in, typed values or
//! byte vectors out.
//!
//! ```text
//! option     C: "IHAVEOPT" u64 | option u32 | len u32 | data[len]
//! opt reply  S: 0x3e889045565a9 u64 | option u32 | type u32 | len u32 | data[len]
//! request    C: 0x25609513 u32 | flags u16 | type u16 | cookie u64 | offset u64 | len u32
//!               (+ len bytes of data for NBD_CMD_WRITE)
//! simple     S: 0x67446698 u32 | error u32 | cookie u64 (+ len bytes for a
//!               successful NBD_CMD_READ)
//! ```
//! Transmission requests are parsed and checked in `request.rs`.
//! All integers are big-endian. Source: the NBD protocol document
//! (NetworkBlockDevice/nbd `doc/proto.md`); names below follow it.
//!
//! Two kinds of failure, kept apart on purpose:
//! - [`ProtoError`]: the byte stream itself cannot be trusted (bad magic, a
//!   write payload we refuse to buffer). The caller closes the connection,
//!   as the spec allows for a violated MUST; there is no way to resync.
//! - `request::RequestError`: a well-framed request the export cannot
//!   honour (unknown command, misaligned, out of range, node not active).
//!   The caller answers with its errno and keeps serving.
//!
//! Must not: panic on any input, allocate by a length it has not checked,
//! or do I/O. Structured replies and extended headers are not negotiated,
//! so only simple replies exist here.

/// `NBDMAGIC`, first word of the server greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second word of the greeting and magic of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a (compact) transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: may omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Handshake flags this server sends.
pub const HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/// Client flag: client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: client wants no zero padding.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`: option unknown to this server.
pub const REP_ERR_UNSUP: u32 = REP_ERR + 1;
/// `NBD_REP_ERR_POLICY`: known and valid, but forbidden here.
pub const REP_ERR_POLICY: u32 = REP_ERR + 2;
/// `NBD_REP_ERR_INVALID`: known but syntactically invalid.
pub const REP_ERR_INVALID: u32 = REP_ERR + 3;
/// `NBD_REP_ERR_UNKNOWN`: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: MUST always be set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` (and `NO_HOLE`) supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: flush/FUA visible across connections.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// What every export of this server offers. Not `CAN_MULTI_CONN`: whether
/// a flush on one connection covers writes acknowledged on another is the
/// replicated journal's promise to make, not this layer's (docs/nbd.md).
pub const TRANSMISSION_FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: `NBD_CMD_WRITE_ZEROES` must not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;
/// Length of an option header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of the greeting.
pub const GREETING_LEN: usize = 18;

/// Longest string the spec allows (export names, messages).
pub const MAX_STRING: usize = 4096;
/// Largest option payload read; more is treated as a denial of service
/// and the connection is closed (the largest legitimate one, GO with a
/// 4096-byte name and every info type, is about 4.1 KiB).
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// NBD error values (the spec's fixed set, not host errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Errno {
    /// Operation not permitted (write to a node that is not active).
    Perm = 1,
    /// I/O error on the backing store.
    Io = 5,
    /// Cannot allocate memory.
    NoMem = 12,
    /// Invalid argument.
    Inval = 22,
    /// No space left (write beyond the end).
    NoSpc = 28,
    /// Value too large.
    Overflow = 75,
    /// Not supported.
    NotSup = 95,
    /// Server is shutting down; the client must disconnect.
    Shutdown = 108,
}

impl Errno {
    /// Value on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// The stream cannot be trusted any more; close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Fewer bytes than the fixed-size structure needs.
    #[error("{what} needs {need} bytes, got {got}")]
    Truncated {
        /// Structure being parsed.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// Wrong magic number: not NBD, or framing lost.
    #[error("{what} magic {found:#x}, expected {expected:#x}")]
    BadMagic {
        /// Structure being parsed.
        what: &'static str,
        /// Magic read.
        found: u64,
        /// Magic wanted.
        expected: u64,
    },
    /// Client flags with bits we did not offer (spec: MUST drop).
    #[error("client flags {flags:#x} include bits not offered")]
    ClientFlags {
        /// Flags read.
        flags: u32,
    },
    /// Option data longer than [`MAX_OPTION_DATA`].
    #[error("option {option} carries {len} bytes (limit {MAX_OPTION_DATA})")]
    OptionTooLarge {
        /// Option number.
        option: u32,
        /// Data length claimed.
        len: u32,
    },
    /// A write whose payload we will not buffer.
    #[error("write payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Length claimed.
        len: u32,
        /// Largest accepted.
        max: u32,
    },
}

fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    // Callers check `buf.len()` first; a short slice yields zeros rather
    // than a panic so a missed check can never crash the server.
    let mut out = [0u8; N];
    if let Some(src) = buf.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

pub(super) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(buf, at))
}
pub(super) fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(buf, at))
}
pub(super) fn be64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(array(buf, at))
}

pub(super) fn need(what: &'static str, buf: &[u8], n: usize) -> Result<(), ProtoError> {
    if buf.len() < n {
        return Err(ProtoError::Truncated { what, need: n, got: buf.len() });
    }
    Ok(())
}

/// The server's opening: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&HANDSHAKE_FLAGS.to_be_bytes());
    out
}

/// Client flags as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// Client set `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub fixed_newstyle: bool,
    /// Client set `NBD_FLAG_C_NO_ZEROES`.
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// Parses the client's 32-bit flags; unknown bits are fatal (spec MUST).
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        need("client flags", buf, 4)?;
        let flags = be32(buf, 0);
        if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(ProtoError::ClientFlags { flags });
        }
        Ok(Self { fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0, no_zeroes: flags & FLAG_C_NO_ZEROES != 0 })
    }
}

/// An option header; `len` bytes of data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option number (`NBD_OPT_*`).
    pub option: u32,
    /// Data length, at most [`MAX_OPTION_DATA`].
    pub len: u32,
}

impl OptionHeader {
    /// Parses 16 bytes of option header.
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        need("option header", buf, OPTION_HEADER_LEN)?;
        let magic = be64(buf, 0);
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic { what: "option", found: magic, expected: IHAVEOPT });
        }
        let option = be32(buf, 8);
        let len = be32(buf, 12);
        if len > MAX_OPTION_DATA {
            return Err(ProtoError::OptionTooLarge { option, len });
        }
        Ok(Self { option, len })
    }

    /// The 16 bytes a client sends (tests, fuzzing).
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0u8; OPTION_HEADER_LEN];
        out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.len.to_be_bytes());
        out
    }
}

/// Why an option's data is invalid (answered with `NBD_REP_ERR_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// Data ends before a field.
    #[error("option data ends before {field}")]
    Short {
        /// Field missing.
        field: &'static str,
    },
    /// Name length does not fit (spec: at most data length - 6).
    #[error("export name length {name_len} does not fit in {data_len} bytes of data")]
    NameLength {
        /// Claimed name length.
        name_len: u32,
        /// Option data length.
        data_len: usize,
    },
    /// Name longer than the spec's 4096-byte limit for strings.
    #[error("export name of {len} bytes exceeds {MAX_STRING}")]
    NameTooLong {
        /// Name length.
        len: usize,
    },
    /// Name is not UTF-8 or contains NUL.
    #[error("export name is not a UTF-8 string without NUL")]
    NameNotString,
    /// Info request count disagrees with the bytes that follow.
    #[error("{count} info requests need {need} bytes, {have} present")]
    InfoCount {
        /// Count claimed.
        count: u16,
        /// Bytes it needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Option must carry no data but does.
    #[error("option takes no data, got {len} bytes")]
    UnexpectedData {
        /// Bytes sent.
        len: usize,
    },
}

fn parse_name(raw: &[u8]) -> Result<String, OptionError> {
    if raw.len() > MAX_STRING {
        return Err(OptionError::NameTooLong { len: raw.len() });
    }
    let s = std::str::from_utf8(raw).map_err(|_| OptionError::NameNotString)?;
    if s.contains('\0') {
        return Err(OptionError::NameNotString);
    }
    Ok(s.to_owned())
}

/// Data of `NBD_OPT_EXPORT_NAME`: the whole payload is the name.
pub fn parse_export_name(data: &[u8]) -> Result<String, OptionError> {
    parse_name(data)
}

/// Data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name; empty means the default export.
    pub name: String,
    /// `NBD_INFO_*` types asked for, in the client's order.
    pub infos: Vec<u16>,
}

impl InfoRequest {
    /// Parses `name_len u32 | name | count u16 | count × u16`.
    pub fn parse(data: &[u8]) -> Result<Self, OptionError> {
        if data.len() < 4 {
            return Err(OptionError::Short { field: "name length" });
        }
        let name_len = be32(data, 0);
        let rest = data.len() - 4;
        // Spec: name length MUST be no larger than data length - 6.
        if rest < 2 || u64::from(name_len) > (rest - 2) as u64 {
            return Err(OptionError::NameLength { name_len, data_len: data.len() });
        }
        let name_end = 4 + name_len as usize;
        let name = parse_name(data.get(4..name_end).unwrap_or_default())?;
        let count = be16(data, name_end);
        let list = data.get(name_end + 2..).unwrap_or_default();
        let need = usize::from(count) * 2;
        if list.len() != need {
            return Err(OptionError::InfoCount { count, need, have: list.len() });
        }
        let infos = list.chunks_exact(2).map(|c| be16(c, 0)).collect();
        Ok(Self { name, infos })
    }

    /// The option data a client sends (tests, fuzzing).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.name.len() + 2 * self.infos.len());
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.infos.len() as u16).to_be_bytes());
        for i in &self.infos {
            out.extend_from_slice(&i.to_be_bytes());
        }
        out
    }
}

/// One option reply: header and data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    // Data is built by this module from bounded strings; saturate rather
    // than wrap should that ever change.
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_EXPORT`.
pub fn info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(g: &Geometry) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&g.min_block.to_be_bytes());
    out.extend_from_slice(&g.preferred_block.to_be_bytes());
    out.extend_from_slice(&g.max_payload.to_be_bytes());
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_NAME`.
pub fn info_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len());
    out.extend_from_slice(&INFO_NAME.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// `NBD_REP_SERVER` data: `len u32 | name`.
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Reply ending an `NBD_OPT_EXPORT_NAME` negotiation.
pub fn export_name_reply(size: u64, tflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// Header of a simple reply; a successful read's data follows it.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}
/// Size limits the export advertises in `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Export size in bytes (a multiple of `min_block`).
    pub size: u64,
    /// Minimum block: every offset and length is a multiple of it.
    pub min_block: u32,
    /// Preferred block.
    pub preferred_block: u32,
    /// Largest READ/WRITE/WRITE_ZEROES length.
    pub max_payload: u32,
}

/// The export's block size: the block store's 4 KiB (docs/nbd.md).
pub const BLOCK_SIZE: u32 = 4096;
/// Largest request payload: 32 MiB, the spec's portable limit.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

impl Geometry {
    /// Geometry of an export of `size` bytes with this server's limits.
    pub fn new(size: u64) -> Self {
        Self { size, min_block: BLOCK_SIZE, preferred_block: BLOCK_SIZE, max_payload: MAX_PAYLOAD }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g() -> Geometry {
        Geometry::new(1 << 20)
    }

    #[test]
    fn greeting_layout() {
        let g = greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(ClientFlags::parse(&[0, 0, 0, 3]), Ok(ClientFlags { fixed_newstyle: true, no_zeroes: true }));
        assert_eq!(ClientFlags::parse(&[0, 0, 0, 0]), Ok(ClientFlags { fixed_newstyle: false, no_zeroes: false }));
        assert_eq!(ClientFlags::parse(&[0, 0, 0, 4]), Err(ProtoError::ClientFlags { flags: 4 }));
        assert!(matches!(ClientFlags::parse(&[0, 0]), Err(ProtoError::Truncated { need: 4, got: 2, .. })));
    }

    #[test]
    fn option_header() {
        let h = OptionHeader { option: OPT_GO, len: 10 };
        assert_eq!(OptionHeader::parse(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(matches!(OptionHeader::parse(&bad), Err(ProtoError::BadMagic { what: "option", .. })));
        let big = OptionHeader { option: 99, len: MAX_OPTION_DATA + 1 }.encode();
        assert_eq!(OptionHeader::parse(&big), Err(ProtoError::OptionTooLarge { option: 99, len: MAX_OPTION_DATA + 1 }));
        assert!(matches!(OptionHeader::parse(&big[..15]), Err(ProtoError::Truncated { .. })));
    }

    #[test]
    fn info_request_round_trip_and_errors() {
        let r = InfoRequest { name: "volume".into(), infos: vec![INFO_BLOCK_SIZE, INFO_NAME] };
        assert_eq!(InfoRequest::parse(&r.encode()), Ok(r.clone()));
        let empty = InfoRequest { name: String::new(), infos: vec![] };
        assert_eq!(InfoRequest::parse(&empty.encode()), Ok(empty));

        assert_eq!(InfoRequest::parse(&[0, 0]), Err(OptionError::Short { field: "name length" }));
        // Name length claims more than data - 6.
        assert!(matches!(InfoRequest::parse(&[0, 0, 0, 1, b'a']), Err(OptionError::NameLength { .. })));
        assert!(matches!(InfoRequest::parse(&[0xff, 0xff, 0xff, 0xff, 0, 0]), Err(OptionError::NameLength { .. })));
        // Count says 2 requests, 1 present.
        assert_eq!(
            InfoRequest::parse(&[0, 0, 0, 0, 0, 2, 0, 3]),
            Err(OptionError::InfoCount { count: 2, need: 4, have: 2 })
        );
        // Trailing byte.
        assert!(matches!(InfoRequest::parse(&[0, 0, 0, 0, 0, 0, 9]), Err(OptionError::InfoCount { .. })));
        assert_eq!(InfoRequest::parse(&[0, 0, 0, 1, 0xff, 0, 0]), Err(OptionError::NameNotString));
        assert_eq!(InfoRequest::parse(&[0, 0, 0, 1, 0, 0, 0]), Err(OptionError::NameNotString));
        let long = InfoRequest { name: "x".repeat(MAX_STRING + 1), infos: vec![] };
        assert_eq!(InfoRequest::parse(&long.encode()), Err(OptionError::NameTooLong { len: MAX_STRING + 1 }));
        assert_eq!(parse_export_name(b"vol"), Ok("vol".into()));
        assert_eq!(parse_export_name(b"v\0l"), Err(OptionError::NameNotString));
    }

    #[test]
    fn replies() {
        let r = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[0..8], &OPT_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[8..12], &[0, 0, 0, 7]);
        assert_eq!(&r[12..16], &[0, 0, 0, 1]);
        assert_eq!(&r[16..20], &[0, 0, 0, 0]);
        assert_eq!(info_export(0x1000, TRANSMISSION_FLAGS), vec![0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x6d]);
        assert_eq!(info_block_size(&g()), vec![0, 3, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0x02, 0, 0, 0]);
        assert_eq!(rep_server("ab"), vec![0, 0, 0, 2, b'a', b'b']);
        assert_eq!(info_name("ab"), vec![0, 1, b'a', b'b']);
        assert_eq!(export_name_reply(1, 1, true).len(), 10);
        assert_eq!(export_name_reply(1, 1, false).len(), 134);
        assert_eq!(simple_reply(22, 9), [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9]);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ClientFlags::parse(&bytes);
            let _ = OptionHeader::parse(&bytes);
            let _ = InfoRequest::parse(&bytes);
            let _ = parse_export_name(&bytes);
        }

        #[test]
        fn info_request_round_trips(name in "[a-z/._-]{0,40}", infos in proptest::collection::vec(any::<u16>(), 0..8)) {
            let r = InfoRequest { name, infos };
            prop_assert_eq!(InfoRequest::parse(&r.encode()), Ok(r));
        }
    }
}
