//! WhatsApp media rules: the message kinds that carry a file, the MIME types and sizes Meta
//! takes for each (Cloud API "supported media types"), and the check the client makes before
//! any upload or send.

use serde::{Deserialize, Serialize};

use super::WhatsAppError;

const KB: u64 = 1024;
const MB: u64 = 1024 * 1024;

/// Largest file [`super::WhatsAppClient::download_media`] fetches (a document's limit).
pub const MAX_DOWNLOAD_BYTES: u64 = 100 * MB;

/// Longest caption of an image, video or document message.
pub const MAX_CAPTION_CHARS: usize = 1024;

/// What the upload endpoint takes (Meta's own list in its `(#100) Param file must be…` error,
/// plus `video/3gp`, the name its media-types table uses).
pub const UPLOAD_MIME_TYPES: &[&str] = &[
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

/// A message kind that carries a file (`type` of a media message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Document,
    Audio,
    Video,
    Sticker,
}

impl MediaKind {
    pub const ALL: [MediaKind; 5] = [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Audio,
        MediaKind::Sticker,
        MediaKind::Document,
    ];

    /// The wire name: `image`, `document`, `audio`, `video`, `sticker`.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Document => "document",
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Sticker => "sticker",
        }
    }

    pub fn parse(name: &str) -> Option<MediaKind> {
        MediaKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The largest file of this kind (stickers: the animated limit; static ones take 100 KB).
    pub fn max_bytes(self) -> u64 {
        match self {
            MediaKind::Image => 5 * MB,
            MediaKind::Document => 100 * MB,
            MediaKind::Audio | MediaKind::Video => 16 * MB,
            MediaKind::Sticker => 500 * KB,
        }
    }

    /// The MIME types a message of this kind may carry.
    pub fn mime_types(self) -> &'static [&'static str] {
        match self {
            MediaKind::Image => &["image/jpeg", "image/png"],
            MediaKind::Document => &[
                "text/plain",
                "application/pdf",
                "application/msword",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.ms-excel",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ],
            MediaKind::Audio => {
                &["audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg", "audio/opus"]
            }
            MediaKind::Video => &["video/mp4", "video/3gp", "video/3gpp"],
            MediaKind::Sticker => &["image/webp"],
        }
    }

    pub fn accepts(self, mime: &str) -> bool {
        self.mime_types().contains(&essence(mime).as_str())
    }

    /// The kind a file of this MIME type is sent as, if WhatsApp takes it at all.
    pub fn for_mime(mime: &str) -> Option<MediaKind> {
        MediaKind::ALL.into_iter().find(|k| k.accepts(mime))
    }

    /// Image, video and document messages may have a caption; audio and stickers not.
    pub fn takes_caption(self) -> bool {
        matches!(self, MediaKind::Image | MediaKind::Video | MediaKind::Document)
    }
}

impl std::fmt::Display for MediaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Image/PNG; charset=x` → `image/png`.
pub fn essence(mime: &str) -> String {
    mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// `5 MB`, `500 KB`, `12 bytes`.
pub fn human_size(bytes: u64) -> String {
    if bytes >= MB && bytes.is_multiple_of(MB) {
        format!("{} MB", bytes / MB)
    } else if bytes >= KB && bytes.is_multiple_of(KB) {
        format!("{} KB", bytes / KB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Whether the upload endpoint takes this type, and the largest such file it takes.
pub fn upload_limit(mime: &str) -> Option<u64> {
    let mime = essence(mime);
    if !UPLOAD_MIME_TYPES.contains(&mime.as_str()) {
        return None;
    }
    // audio/opus and video/3gpp are in the upload list; they are audio and video.
    Some(
        MediaKind::ALL
            .into_iter()
            .filter(|k| k.accepts(&mime))
            .map(MediaKind::max_bytes)
            .max()
            .unwrap_or(16 * MB),
    )
}

/// Checks a file against the rules of `kind` before anything is sent.
pub fn check(kind: MediaKind, mime: &str, size: u64) -> Result<(), WhatsAppError> {
    if size == 0 {
        return Err(WhatsAppError::Invalid("an empty file cannot be sent".into()));
    }
    if !kind.accepts(mime) {
        return Err(WhatsAppError::MediaTypeUnsupported {
            kind: Some(kind),
            mime: mime.to_owned(),
        });
    }
    if size > kind.max_bytes() {
        return Err(WhatsAppError::MediaTooLarge {
            kind: Some(kind),
            size,
            limit: kind.max_bytes(),
        });
    }
    Ok(())
}

/// Graph ids are plain tokens: anything else would change the path of the call.
pub(crate) fn check_media_id(id: &str) -> Result<(), WhatsAppError> {
    if !id.is_empty()
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(())
    } else {
        Err(WhatsAppError::Invalid(format!("{id:?} is not a media id")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_know_their_types_and_limits() {
        assert_eq!(MediaKind::for_mime("image/JPEG"), Some(MediaKind::Image));
        assert_eq!(MediaKind::for_mime("image/webp"), Some(MediaKind::Sticker));
        assert_eq!(MediaKind::for_mime("audio/ogg; codecs=opus"), Some(MediaKind::Audio));
        assert_eq!(MediaKind::for_mime("application/pdf"), Some(MediaKind::Document));
        assert_eq!(MediaKind::for_mime("application/zip"), None);
        assert_eq!(MediaKind::parse("video"), Some(MediaKind::Video));
        assert_eq!(MediaKind::parse("gif"), None);
        assert_eq!(human_size(MediaKind::Image.max_bytes()), "5 MB");
        assert_eq!(human_size(MediaKind::Sticker.max_bytes()), "500 KB");
        assert_eq!(upload_limit("image/png"), Some(5 * MB));
        assert_eq!(upload_limit("video/3gpp"), Some(16 * MB));
        assert_eq!(upload_limit("application/zip"), None);
    }

    #[test]
    fn the_check_names_the_limit() {
        let err = check(MediaKind::Image, "image/png", 5 * MB + 1).expect_err("too large");
        assert!(err.to_string().contains("5 MB"), "{err}");
        let err = check(MediaKind::Image, "application/pdf", 10).expect_err("not an image");
        assert!(err.to_string().contains("image/jpeg"), "{err}");
        assert!(check(MediaKind::Document, "application/pdf", 100 * MB).is_ok());
        assert!(check(MediaKind::Audio, "audio/mpeg", 0).is_err());
        assert!(check_media_id("1003383421387256").is_ok());
        assert!(check_media_id("../groups").is_err());
    }
}
