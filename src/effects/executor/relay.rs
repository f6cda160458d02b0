//! Relaying a room's file to WhatsApp: as media inside the 24-hour window, else as a notice
//! that a file was shared (the room is told why).

use super::{Done, EffectExecutor, Failure, permanent};
use crate::domain::{GroupKey, StreamId, WaMessageRecord};
use crate::effects::Outcome;
use crate::metrics::RelayDirection;
use crate::whatsapp::{Recipient, TemplateParam};

impl EffectExecutor {
    /// A Symphony file to WhatsApp as media, or, outside the window (WhatsApp takes no free
    /// media then), a notice through the template that a file was shared, and the room told.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay_file(
        &self,
        group: GroupKey,
        to: &Recipient,
        stream: &StreamId,
        message_id: &str,
        file_id: &str,
        name: &str,
        author: &str,
    ) -> Result<Done, Failure> {
        let wa = self.whatsapp()?;
        let record = |id: String, kind: &str| WaMessageRecord {
            wa_message_id: id,
            group,
            inbound: false,
            phone: to.phone().cloned(),
            symphony_message_id: Some(message_id.to_owned()),
            author: author.to_owned(),
            excerpt: name.to_owned(),
            kind: kind.to_owned(),
            body: None,
        };
        if !self.window_open(to)? {
            let t = &self.message_template;
            let text = self.templates.render(
                "whatsapp/file_shared",
                &serde_json::json!({"sender": author, "name": name}),
            )?;
            // The notice is short (a name): one part.
            let part = crate::whatsapp::rules::template_parts(&text).concat();
            let id =
                wa.send_template(to, &t.name, &t.language, &[TemplateParam::Text(part)]).await?;
            return Ok(Done {
                sent: vec![record(id, "template")],
                outcome: Some(Outcome::FileNotSent {
                    stream: stream.clone(),
                    name: name.to_owned(),
                }),
                posted: None,
            });
        }
        let bytes = self.symphony.download_attachment(stream, message_id, file_id).await?;
        let mime = mime_guess::from_path(name).first_or_octet_stream().essence_str().to_owned();
        let kind = crate::whatsapp::media::MediaKind::for_mime(&mime)
            .ok_or_else(|| permanent(format!("WhatsApp does not take {mime} files")))?;
        let file =
            crate::whatsapp::OutgoingFile { filename: name.to_owned(), mime, bytes: bytes.into() };
        let caption = format!("*{author}*");
        let caption = kind.takes_caption().then_some(caption.as_str());
        let id = wa.send_file(to, kind, &file, caption).await?;
        self.metrics.relayed(RelayDirection::ToWhatsApp);
        Ok(Done { sent: vec![record(id, "media")], ..Done::default() })
    }
}
