//! Meta's media rules as the simulator enforces them, written from Meta's "supported media
//! types" table and the upload endpoint's `(#100) Param file must be…` error (see
//! `shared/research/whatsapp-api.md`); the simulator shares no code with the bot's client.

const KB: u64 = 1024;
const MB: u64 = 1024 * 1024;

/// Longest caption of an image, video or document message.
pub(crate) const MAX_CAPTION_CHARS: usize = 1024;

/// A group profile picture: JPEG only, at most 5 MB, square, at least 192 × 192 pixels.
pub(crate) const PICTURE_MAX_BYTES: u64 = 5 * MB;
pub(crate) const PICTURE_MIN_SIDE: u32 = 192;

/// What `POST /<PHONE_NUMBER_ID>/media` takes, in the order of Meta's own error message (plus
/// `video/3gp`, the name of Meta's media-types table).
pub(crate) const UPLOAD_MIME_TYPES: &[&str] = &[
    "audio/aac",
    "audio/mp4",
    "audio/mpeg",
    "audio/amr",
    "audio/ogg",
    "audio/opus",
    "application/vnd.ms-powerpoint",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/pdf",
    "text/plain",
    "application/vnd.ms-excel",
    "image/jpeg",
    "image/png",
    "image/webp",
    "video/mp4",
    "video/3gpp",
    "video/3gp",
];

/// A message type that carries a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Image,
    Document,
    Audio,
    Video,
    Sticker,
}

/// One row of Meta's table: the kind, its wire name, its types and its size limit.
struct Row {
    kind: Kind,
    name: &'static str,
    types: &'static [&'static str],
    max_bytes: u64,
    caption: bool,
}

const TABLE: &[Row] = &[
    Row {
        kind: Kind::Image,
        name: "image",
        types: &["image/jpeg", "image/png"],
        max_bytes: 5 * MB,
        caption: true,
    },
    Row {
        kind: Kind::Video,
        name: "video",
        types: &["video/mp4", "video/3gp", "video/3gpp"],
        max_bytes: 16 * MB,
        caption: true,
    },
    Row {
        kind: Kind::Audio,
        name: "audio",
        types: &["audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg", "audio/opus"],
        max_bytes: 16 * MB,
        caption: false,
    },
    // Animated stickers may have 500 KB (static ones 100 KB; the simulator takes the larger).
    Row {
        kind: Kind::Sticker,
        name: "sticker",
        types: &["image/webp"],
        max_bytes: 500 * KB,
        caption: false,
    },
    Row {
        kind: Kind::Document,
        name: "document",
        types: &[
            "text/plain",
            "application/pdf",
            "application/msword",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.ms-excel",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.ms-powerpoint",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ],
        max_bytes: 100 * MB,
        caption: true,
    },
];

impl Kind {
    fn row(self) -> &'static Row {
        TABLE.iter().find(|r| r.kind == self).unwrap_or(&TABLE[0])
    }

    pub(crate) fn as_str(self) -> &'static str {
        self.row().name
    }

    pub(crate) fn parse(name: &str) -> Option<Kind> {
        TABLE.iter().find(|r| r.name == name).map(|r| r.kind)
    }

    pub(crate) fn max_bytes(self) -> u64 {
        self.row().max_bytes
    }

    pub(crate) fn accepts(self, mime: &str) -> bool {
        self.row().types.contains(&essence(mime).as_str())
    }

    /// Image, video and document messages may have a caption; audio and stickers not.
    pub(crate) fn takes_caption(self) -> bool {
        self.row().caption
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Image/PNG; charset=x` → `image/png`.
pub(crate) fn essence(mime: &str) -> String {
    mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// `5 MB`, `500 KB`, `12 bytes`.
pub(crate) fn human_size(bytes: u64) -> String {
    if bytes >= MB && bytes.is_multiple_of(MB) {
        format!("{} MB", bytes / MB)
    } else if bytes >= KB && bytes.is_multiple_of(KB) {
        format!("{} KB", bytes / KB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Whether the upload endpoint takes this type, and the largest such file it takes.
pub(crate) fn upload_limit(mime: &str) -> Option<u64> {
    let mime = essence(mime);
    if !UPLOAD_MIME_TYPES.contains(&mime.as_str()) {
        return None;
    }
    // audio/opus and video/3gpp are in the upload list; they are audio and video.
    TABLE
        .iter()
        .filter(|r| r.types.contains(&mime.as_str()))
        .map(|r| r.max_bytes)
        .max()
        .or(Some(16 * MB))
}

/// The width and height of a baseline or progressive JPEG (from its SOF segment), `None` when
/// the bytes are no JPEG.
pub(crate) fn jpeg_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let seg = bytes.get(i + 4..i + 9)?;
            let height = u32::from(u16::from_be_bytes([seg[1], seg[2]]));
            let width = u32::from(u16::from_be_bytes([seg[3], seg[4]]));
            return Some((width, height));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_types_and_limits() {
        assert!(Kind::Image.accepts("image/JPEG"));
        assert!(Kind::Audio.accepts("audio/ogg; codecs=opus"));
        assert!(!Kind::Image.accepts("image/webp"));
        assert_eq!(Kind::parse("video"), Some(Kind::Video));
        assert_eq!(Kind::parse("gif"), None);
        assert_eq!(human_size(Kind::Image.max_bytes()), "5 MB");
        assert_eq!(human_size(Kind::Sticker.max_bytes()), "500 KB");
        assert_eq!(upload_limit("image/png"), Some(5 * MB));
        assert_eq!(upload_limit("video/3gpp"), Some(16 * MB));
        assert_eq!(upload_limit("application/pdf"), Some(100 * MB));
        assert_eq!(upload_limit("application/zip"), None);
    }

    #[test]
    fn jpeg_sizes_are_read_from_the_frame_header() {
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        jpeg.extend([0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0xC8, 0x01, 0x2C]);
        assert_eq!(jpeg_size(&jpeg), Some((300, 200)));
        assert_eq!(jpeg_size(b"\x89PNG...."), None);
    }
}
