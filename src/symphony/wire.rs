//! Datafeed `V4Event`s and `V4Message`s as typed, lenient shapes, read straight from the
//! agent's answer without a `serde_json::Value` tree (building and dropping that tree was ~7%
//! of a command's CPU). Lenient as that tree was read: a field of another JSON type than the
//! spec's is as absent, and what the bot does not read is skipped, so one odd field never costs
//! an event.

use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A field read leniently: `None` when it is absent, `null`, or of another type.
pub(crate) struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> Lenient<T> {
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

/// What a [`Lenient`] field holds: each kind takes its own JSON type and skips any other.
pub(crate) trait Read: Sized {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error>;
}

/// A JSON object shape (its fields lenient, its other fields skipped).
pub(crate) trait Object: for<'de> Deserialize<'de> {}

impl<'de, T: Read> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::read(d).map(Lenient)
    }
}

/// A value as read for a string or number field.
enum Scalar {
    Str(String),
    I64(i64),
    U64(u64),
    Other,
}

struct ScalarVisitor;

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, M: MapAccess<'de>>(mut map: M) -> Result<(), M::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
        drain_seq(seq).map(|()| Scalar::Other)
    }
    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Scalar, M::Error> {
        drain_map(map).map(|()| Scalar::Other)
    }
}

impl Read for String {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        })
    }
}

impl Read for i64 {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::I64(n) => Some(n),
            Scalar::U64(n) => i64::try_from(n).ok(),
            _ => None,
        })
    }
}

impl Read for u64 {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::U64(n) => Some(n),
            Scalar::I64(n) => u64::try_from(n).ok(),
            _ => None,
        })
    }
}

/// Any JSON, kept as it is (`null` too).
impl Read for Value {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        Value::deserialize(d).map(Some)
    }
}

/// Skips what is not an object or a list, for [`ObjectVisitor`] and [`ListVisitor`].
macro_rules! skip_scalars {
    () => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Object> Visitor<'de> for ObjectVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    skip_scalars!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| None)
    }
    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Some)
    }
}

impl<T: Object> Read for T {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(ObjectVisitor(PhantomData))
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Read> Visitor<'de> for ListVisitor<T> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    skip_scalars!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Lenient<T>>()? {
            out.extend(item.0);
        }
        Ok(Some(out))
    }
    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
        drain_map(map).map(|()| None)
    }
}

/// A list: its items of another type than `T` are left out.
impl<T: Read> Read for Vec<T> {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(ListVisitor(PhantomData))
    }
}

/// Declares lenient object shapes: every field a [`Lenient`], absent when missing.
macro_rules! objects {
    ($($(#[$m:meta])* struct $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty,)* })*) => {$(
        $(#[$m])*
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        pub(crate) struct $name { $($(#[$fm])* pub $field: Lenient<$ty>,)* }
        impl Object for $name {}
    )*};
}

objects! {
    /// `V4Event`.
    struct Event {
        id: String,
        #[serde(rename = "type")]
        kind: String,
        timestamp: i64,
        initiator: Initiator,
        payload: Payload,
    }

    /// `V4Initiator`.
    struct Initiator {
        user: User,
    }

    /// `V4User`.
    struct User {
        user_id: i64,
        display_name: String,
        email: String,
    }

    /// `V4Payload`: the one entry its event's type names.
    struct Payload {
        message_sent: MessageSent,
        instant_message_created: StreamEvent,
        room_created: RoomCreated,
        room_updated: RoomUpdated,
        room_deactivated: StreamEvent,
        room_reactivated: StreamEvent,
        user_joined_room: Membership,
        user_left_room: Membership,
        room_member_promoted_to_owner: Membership,
        room_member_demoted_from_owner: Membership,
        symphony_elements_action: ElementsAction,
    }

    /// `V4MessageSent`.
    struct MessageSent {
        message: Message,
    }

    /// `V4Message`.
    struct Message {
        message_id: String,
        timestamp: i64,
        message: String,
        data: String,
        user: User,
        stream: Stream,
        attachments: Vec<Attachment>,
    }

    /// `V4Stream`.
    struct Stream {
        stream_id: String,
        stream_type: String,
        room_name: String,
    }

    /// `V4AttachmentInfo`.
    struct Attachment {
        id: String,
        name: String,
        size: u64,
    }

    /// `V4InstantMessageCreated`, `V4RoomDeactivated`, `V4RoomReactivated`.
    struct StreamEvent {
        stream: Stream,
    }

    /// `V4RoomCreated`.
    struct RoomCreated {
        stream: Stream,
        room_properties: RoomProperties,
    }

    /// `V4RoomUpdated`.
    struct RoomUpdated {
        stream: Stream,
        new_room_properties: RoomProperties,
    }

    /// `V4RoomProperties`.
    struct RoomProperties {
        name: String,
    }

    /// `V4UserJoinedRoom`, `V4UserLeftRoom`, `V4RoomMemberPromotedToOwner`,
    /// `V4RoomMemberDemotedFromOwner`.
    struct Membership {
        stream: Stream,
        affected_user: User,
    }

    /// `V4SymphonyElementsAction`.
    struct ElementsAction {
        stream: Stream,
        form_message_id: String,
        form_id: String,
        form_values: Value,
    }
}

/// `V5EventList`: each event kept as its own JSON text, read on its own, so that an event the
/// bot cannot read costs that event and never the batch.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventList {
    #[serde(default)]
    pub events: Option<Vec<Box<serde_json::value::RawValue>>>,
    /// Optional in the spec: a read may answer without one (then the last one stays in force).
    #[serde(default)]
    pub ack_id: Option<String>,
}
