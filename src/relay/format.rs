//! Placeholder conversions (replaced by the full PresentationML ↔ WhatsApp formatting).

use crate::symphony::messageml::MessageMlError;

pub fn to_whatsapp(presentation_ml: &str, data: Option<&str>) -> Result<String, MessageMlError> {
    Ok(crate::symphony::messageml::parse(presentation_ml, data)?.text)
}

pub fn to_message_ml(text: &str) -> String {
    crate::templates::escape_message_ml(text).replace('\n', "<br/>")
}
