//! Transmission requests: the 28-byte header, and `check`, which turns a
//! header into a [`Command`] the device may carry out or a
//! [`RequestError`] to answer with an errno (spec "Error values").
//!
//! Must not: panic on any header, or accept a range that is outside the
//! export, misaligned to the minimum block, or above the maximum payload.

use super::proto::{
    be16, be32, be64, need, Errno, Geometry, ProtoError, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, REQUEST_LEN, REQUEST_MAGIC,
};

/// Command kinds this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1).
    Write,
    /// `NBD_CMD_DISC` (2).
    Disc,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
}

impl Cmd {
    fn from_wire(kind: u16) -> Option<Self> {
        Some(match kind {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Disc,
            3 => Self::Flush,
            4 => Self::Trim,
            6 => Self::WriteZeroes,
            _ => return None,
        })
    }

    /// Value on the wire.
    pub fn to_wire(self) -> u16 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::Disc => 2,
            Self::Flush => 3,
            Self::Trim => 4,
            Self::WriteZeroes => 6,
        }
    }

    /// Command flags valid with this command. FUA is valid on every
    /// command once `SEND_FUA` is offered (spec: the server MUST accept it,
    /// even by ignoring it); NO_HOLE only on WRITE_ZEROES; DF, REQ_ONE,
    /// FAST_ZERO and PAYLOAD_LEN need extensions we do not offer.
    fn allowed_flags(self) -> u16 {
        match self {
            Self::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            _ => CMD_FLAG_FUA,
        }
    }

    fn modifies(self) -> bool {
        matches!(self, Self::Write | Self::Trim | Self::WriteZeroes)
    }
}

/// A request header as framed, not yet checked against the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: u16,
    /// Command type on the wire.
    pub kind: u16,
    /// Opaque cookie (the spec's "handle"), echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

impl RequestHeader {
    /// Parses 28 bytes of request header. Only the magic is checked here:
    /// with a wrong magic the stream is not framed any more.
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        need("request", buf, REQUEST_LEN)?;
        let magic = be32(buf, 0);
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request",
                found: u64::from(magic),
                expected: u64::from(REQUEST_MAGIC),
            });
        }
        Ok(Self {
            flags: be16(buf, 4),
            kind: be16(buf, 6),
            cookie: be64(buf, 8),
            offset: be64(buf, 16),
            len: be32(buf, 24),
        })
    }

    /// The 28 bytes a client sends (tests, fuzzing).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Bytes of payload that follow this header on the wire. Only
    /// `NBD_CMD_WRITE` carries one (no extended headers). A payload above
    /// `max` is fatal: the spec lets the server hard-disconnect rather
    /// than buffer it, and skipping it would let a client make us read
    /// up to 4 GiB per request.
    pub fn payload_len(&self, max: u32) -> Result<usize, ProtoError> {
        if self.kind != Cmd::Write.to_wire() {
            return Ok(0);
        }
        if self.len > max {
            return Err(ProtoError::PayloadTooLarge { len: self.len, max });
        }
        Ok(self.len as usize)
    }
}

/// A request the export will carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `offset`.
    Read {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write the payload at `offset`.
    Write {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Make every acknowledged write durable.
    Flush,
    /// Discard a range.
    Trim {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Durable before the reply.
        fua: bool,
        /// Client asked that no hole be punched.
        no_hole: bool,
    },
    /// Soft disconnect: finish in-flight requests, then close.
    Disc,
}

/// Why a well-framed request is refused; answered with [`Self::errno`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Command type not implemented (READ/WRITE/DISC/FLUSH/TRIM/WRITE_ZEROES are).
    #[error("unknown command type {kind}")]
    UnknownCommand {
        /// Type on the wire.
        kind: u16,
    },
    /// Flags not valid for this command.
    #[error("{cmd:?} with unsupported flags {flags:#x}")]
    BadFlags {
        /// Command.
        cmd: Cmd,
        /// Flags sent.
        flags: u16,
    },
    /// FLUSH with nonzero reserved offset/length.
    #[error("FLUSH with offset {offset} and length {len}; both must be zero")]
    FlushArgs {
        /// Offset sent.
        offset: u64,
        /// Length sent.
        len: u32,
    },
    /// This node does not serve the volume now.
    #[error("{cmd:?} refused: this node is not active")]
    NotActive {
        /// Command.
        cmd: Cmd,
    },
    /// Length above the advertised maximum.
    #[error("{cmd:?} of {len} bytes exceeds the maximum {max}")]
    TooLarge {
        /// Command.
        cmd: Cmd,
        /// Length sent.
        len: u32,
        /// Advertised maximum.
        max: u32,
    },
    /// Offset or length not a multiple of the minimum block.
    #[error("{cmd:?} at {offset}+{len} is not aligned to {block}")]
    Misaligned {
        /// Command.
        cmd: Cmd,
        /// Offset sent.
        offset: u64,
        /// Length sent.
        len: u32,
        /// Advertised minimum block.
        block: u32,
    },
    /// Range beyond the end of the export (or offset + length overflows).
    #[error("{cmd:?} at {offset}+{len} is beyond the export size {size}")]
    OutOfRange {
        /// Command.
        cmd: Cmd,
        /// Offset sent.
        offset: u64,
        /// Length sent.
        len: u32,
        /// Export size.
        size: u64,
    },
}

impl RequestError {
    /// The error value to reply with (spec "Error values").
    pub fn errno(&self) -> Errno {
        match self {
            Self::UnknownCommand { .. }
            | Self::BadFlags { .. }
            | Self::FlushArgs { .. }
            | Self::TooLarge { .. }
            | Self::Misaligned { .. } => Errno::Inval,
            // Spec: EPERM for a write or trim on a read-only export. Reads
            // and flushes get ESHUTDOWN, which obliges the client to
            // disconnect (and reconnect through the VIP to the new active
            // node) instead of retrying here against data that may be stale.
            Self::NotActive { cmd } if cmd.modifies() => Errno::Perm,
            Self::NotActive { .. } => Errno::Shutdown,
            // Spec: ENOSPC for a write beyond the end; reads get EINVAL.
            Self::OutOfRange { cmd, .. } if cmd.modifies() => Errno::NoSpc,
            Self::OutOfRange { .. } => Errno::Inval,
        }
    }
}

/// Checks a request against the export and whether this node is active.
///
/// Order matters only for which error a doubly-bad request gets: the
/// command and its flags first (nothing else is meaningful without them),
/// then activity (a standby refuses everything, whatever the range), then
/// the size limit, alignment, and range.
pub fn check(h: &RequestHeader, g: &Geometry, active: bool) -> Result<Command, RequestError> {
    let cmd = Cmd::from_wire(h.kind).ok_or(RequestError::UnknownCommand { kind: h.kind })?;
    if h.flags & !cmd.allowed_flags() != 0 {
        return Err(RequestError::BadFlags { cmd, flags: h.flags });
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    match cmd {
        // DISC always goes through: even a standby lets a client leave.
        Cmd::Disc => return Ok(Command::Disc),
        Cmd::Flush if h.offset != 0 || h.len != 0 => {
            return Err(RequestError::FlushArgs { offset: h.offset, len: h.len })
        }
        _ => {}
    }
    if !active {
        return Err(RequestError::NotActive { cmd });
    }
    if cmd == Cmd::Flush {
        return Ok(Command::Flush);
    }
    // TRIM's length is not a payload; the spec puts no maximum on it.
    if cmd != Cmd::Trim && h.len > g.max_payload {
        return Err(RequestError::TooLarge { cmd, len: h.len, max: g.max_payload });
    }
    let block = u64::from(g.min_block.max(1));
    if !h.offset.is_multiple_of(block) || !u64::from(h.len).is_multiple_of(block) {
        return Err(RequestError::Misaligned { cmd, offset: h.offset, len: h.len, block: g.min_block });
    }
    let in_range = h.offset.checked_add(u64::from(h.len)).is_some_and(|end| end <= g.size);
    if !in_range {
        return Err(RequestError::OutOfRange { cmd, offset: h.offset, len: h.len, size: g.size });
    }
    let (offset, len) = (h.offset, h.len);
    Ok(match cmd {
        Cmd::Read => Command::Read { offset, len },
        Cmd::Write => Command::Write { offset, len, fua },
        Cmd::Trim => Command::Trim { offset, len, fua },
        Cmd::WriteZeroes => Command::WriteZeroes { offset, len, fua, no_hole: h.flags & CMD_FLAG_NO_HOLE != 0 },
        Cmd::Disc | Cmd::Flush => return Err(RequestError::UnknownCommand { kind: h.kind }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::proto::MAX_PAYLOAD;
    use super::*;
    use proptest::prelude::*;

    const SIZE: u64 = 1 << 20;

    fn g() -> Geometry {
        Geometry::new(SIZE)
    }

    fn req(cmd: Cmd, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader { flags, kind: cmd.to_wire(), cookie: 7, offset, len }
    }

    #[test]
    fn request_header() {
        let h = req(Cmd::Write, CMD_FLAG_FUA, 4096, 8192);
        assert_eq!(RequestHeader::parse(&h.encode()), Ok(h));
        assert_eq!(h.payload_len(MAX_PAYLOAD), Ok(8192));
        assert_eq!(req(Cmd::Read, 0, 0, 1 << 30).payload_len(MAX_PAYLOAD), Ok(0));
        assert_eq!(
            req(Cmd::Write, 0, 0, MAX_PAYLOAD + 1).payload_len(MAX_PAYLOAD),
            Err(ProtoError::PayloadTooLarge { len: MAX_PAYLOAD + 1, max: MAX_PAYLOAD })
        );
        let mut bad = h.encode();
        bad[3] ^= 1;
        assert!(matches!(RequestHeader::parse(&bad), Err(ProtoError::BadMagic { what: "request", .. })));
        assert!(matches!(RequestHeader::parse(&bad[..27]), Err(ProtoError::Truncated { need: 28, got: 27, .. })));
    }

    #[test]
    fn check_accepts_good_requests() {
        let g = g();
        assert_eq!(check(&req(Cmd::Read, 0, 0, 4096), &g, true), Ok(Command::Read { offset: 0, len: 4096 }));
        assert_eq!(check(&req(Cmd::Read, CMD_FLAG_FUA, 0, 4096), &g, true), Ok(Command::Read { offset: 0, len: 4096 }));
        assert_eq!(
            check(&req(Cmd::Write, CMD_FLAG_FUA, SIZE - 4096, 4096), &g, true),
            Ok(Command::Write { offset: SIZE - 4096, len: 4096, fua: true })
        );
        assert_eq!(check(&req(Cmd::Flush, 0, 0, 0), &g, true), Ok(Command::Flush));
        assert_eq!(
            check(&req(Cmd::Trim, 0, 0, SIZE as u32), &g, true),
            Ok(Command::Trim { offset: 0, len: SIZE as u32, fua: false })
        );
        assert_eq!(
            check(&req(Cmd::WriteZeroes, CMD_FLAG_NO_HOLE, 8192, 4096), &g, true),
            Ok(Command::WriteZeroes { offset: 8192, len: 4096, fua: false, no_hole: true })
        );
        assert_eq!(check(&req(Cmd::Disc, 0, 0, 0), &g, false), Ok(Command::Disc));
        // Zero-length requests are aligned and in range: harmless no-ops.
        assert_eq!(check(&req(Cmd::Read, 0, SIZE, 0), &g, true), Ok(Command::Read { offset: SIZE, len: 0 }));
    }

    #[test]
    fn check_error_paths_and_errnos() {
        let g = g();
        let e = |h: RequestHeader, active: bool| check(&h, &g, active).map_err(|e| (e.errno(), e));
        let unknown = RequestHeader { flags: 0, kind: 5, cookie: 1, offset: 0, len: 0 };
        assert_eq!(e(unknown, true), Err((Errno::Inval, RequestError::UnknownCommand { kind: 5 })));
        assert_eq!(
            e(req(Cmd::Write, CMD_FLAG_NO_HOLE, 0, 4096), true),
            Err((Errno::Inval, RequestError::BadFlags { cmd: Cmd::Write, flags: CMD_FLAG_NO_HOLE }))
        );
        assert_eq!(e(req(Cmd::Read, 1 << 2, 0, 4096), true).map_err(|x| x.0), Err(Errno::Inval));
        assert_eq!(
            e(req(Cmd::Flush, 0, 1, 0), true),
            Err((Errno::Inval, RequestError::FlushArgs { offset: 1, len: 0 }))
        );
        assert_eq!(
            e(req(Cmd::Write, 0, 0, 4096), false),
            Err((Errno::Perm, RequestError::NotActive { cmd: Cmd::Write }))
        );
        assert_eq!(e(req(Cmd::Trim, 0, 0, 4096), false).map_err(|x| x.0), Err(Errno::Perm));
        assert_eq!(e(req(Cmd::WriteZeroes, 0, 0, 4096), false).map_err(|x| x.0), Err(Errno::Perm));
        assert_eq!(
            e(req(Cmd::Read, 0, 0, 4096), false),
            Err((Errno::Shutdown, RequestError::NotActive { cmd: Cmd::Read }))
        );
        assert_eq!(e(req(Cmd::Flush, 0, 0, 0), false).map_err(|x| x.0), Err(Errno::Shutdown));
        assert_eq!(
            e(req(Cmd::Read, 0, 0, MAX_PAYLOAD + 4096), true),
            Err((Errno::Inval, RequestError::TooLarge { cmd: Cmd::Read, len: MAX_PAYLOAD + 4096, max: MAX_PAYLOAD }))
        );
        assert_eq!(e(req(Cmd::WriteZeroes, 0, 0, MAX_PAYLOAD + 4096), true).map_err(|x| x.0), Err(Errno::Inval));
        assert_eq!(
            e(req(Cmd::Read, 0, 512, 4096), true),
            Err((Errno::Inval, RequestError::Misaligned { cmd: Cmd::Read, offset: 512, len: 4096, block: 4096 }))
        );
        assert_eq!(e(req(Cmd::Write, 0, 0, 100), true).map_err(|x| x.0), Err(Errno::Inval));
        assert_eq!(
            e(req(Cmd::Read, 0, SIZE, 4096), true),
            Err((Errno::Inval, RequestError::OutOfRange { cmd: Cmd::Read, offset: SIZE, len: 4096, size: SIZE }))
        );
        assert_eq!(e(req(Cmd::Write, 0, SIZE, 4096), true).map_err(|x| x.0), Err(Errno::NoSpc));
        assert_eq!(e(req(Cmd::Trim, 0, SIZE - 4096, 8192), true).map_err(|x| x.0), Err(Errno::NoSpc));
        // offset + len overflows u64: out of range, not a wrap to a small end.
        let top = u64::MAX - 4095;
        assert_eq!(e(req(Cmd::Read, 0, top, 8192), true).map_err(|x| x.0), Err(Errno::Inval));
        assert_eq!(e(req(Cmd::Write, 0, top, 8192), true).map_err(|x| x.0), Err(Errno::NoSpc));
    }

    proptest! {
        #[test]
        fn header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = RequestHeader::parse(&bytes) {
                let _ = h.payload_len(MAX_PAYLOAD);
                let _ = check(&h, &g(), true);
                let _ = check(&h, &g(), false);
            }
        }

        #[test]
        fn accepted_requests_are_in_bounds(flags: u16, kind in 0u16..10, offset: u64, len: u32, size in 0u64..(1 << 40)) {
            let g = Geometry::new(size - size % 4096);
            let h = RequestHeader { flags, kind, cookie: 0, offset, len };
            prop_assert_eq!(RequestHeader::parse(&h.encode()), Ok(h));
            match check(&h, &g, true) {
                Ok(Command::Read { offset, len }) | Ok(Command::Write { offset, len, .. })
                | Ok(Command::Trim { offset, len, .. }) | Ok(Command::WriteZeroes { offset, len, .. }) => {
                    prop_assert!(offset + u64::from(len) <= g.size);
                    prop_assert_eq!(offset % 4096, 0);
                    prop_assert_eq!(len % 4096, 0);
                }
                Ok(Command::Flush) | Ok(Command::Disc) | Err(_) => {}
            }
        }

    }
}
