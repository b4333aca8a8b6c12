//! The Call resource's schema: its 22 attributes and 15 relationships, what type each holds, who
//! may write it, and how long it may be.

use crate::call_ref::AttrRef;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// What an attribute holds and the rule its values follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrKind {
    /// An RFC 3339 date-time.
    Time,
    /// A string of at most `max` Unicode characters; `url` restricts it to http(s) URLs.
    Text {
        /// Longest allowed value, in characters.
        max: usize,
        /// Whether the value must be an http or https URL.
        url: bool,
    },
    /// One of a fixed list of strings.
    Enum(&'static [&'static str]),
    /// A boolean.
    Bool,
    /// An array of strings.
    Tags,
}

/// Who may write an attribute or relationship.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Any writer.
    Writable,
    /// Only the telephony system (a writer with the voice right).
    Telephony,
    /// Nobody: the ledger sets it.
    Server,
}

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in the order the API writes them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name the API uses.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// Looks a name up, case-sensitively, as the API spells it.
            pub fn from_name(name: &str) -> Option<$name> {
                match name { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_enum! {
    /// An attribute of a call.
    Field {
        /// When the call was answered.
        AnsweredAt = "answeredAt",
        /// When the call was completed.
        CompletedAt = "completedAt",
        /// When the CallCreated event was recorded.
        CreatedAt = "createdAt",
        /// When the call was dialed.
        DialedAt = "dialedAt",
        /// "inbound" or "outbound".
        Direction = "direction",
        /// The voice provider.
        ExternalVendor = "externalVendor",
        /// The number the call was placed from.
        From = "from",
        /// A free-text note.
        Note = "note",
        /// "Answered" or "Not Answered".
        Outcome = "outcome",
        /// The recording's http(s) URL.
        RecordingUrl = "recordingUrl",
        /// When the call was returned.
        ReturnedAt = "returnedAt",
        /// What to do with the sequence.
        SequenceAction = "sequenceAction",
        /// Whether the call is recorded.
        ShouldRecordCall = "shouldRecordCall",
        /// The call's state, owned by telephony.
        State = "state",
        /// When `state` last changed.
        StateChangedAt = "stateChangedAt",
        /// Tags such as "Interested".
        Tags = "tags",
        /// The number the call was placed to.
        To = "to",
        /// The voice trace id, owned by telephony.
        Uid = "uid",
        /// When the call's latest event was recorded.
        UpdatedAt = "updatedAt",
        /// "bridge" or "voip".
        UserCallType = "userCallType",
        /// The provider's call id.
        VendorCallId = "vendorCallId",
        /// The voicemail recording's URL, owned by telephony.
        VoicemailRecordingUrl = "voicemailRecordingUrl",
    }
}

impl Field {
    /// What the attribute holds.
    pub fn kind(self) -> AttrKind {
        use Field::*;
        match self {
            AnsweredAt | CompletedAt | CreatedAt | DialedAt | ReturnedAt | StateChangedAt
            | UpdatedAt => AttrKind::Time,
            Direction => AttrKind::Enum(&["inbound", "outbound"]),
            Outcome => AttrKind::Enum(&["Answered", "Not Answered"]),
            SequenceAction => {
                AttrKind::Enum(&["Advance", "Finish", "Finish - No Reply", "Finish - Replied"])
            }
            UserCallType => AttrKind::Enum(&["bridge", "voip"]),
            ExternalVendor | From | To | State | Uid => AttrKind::Text {
                max: 255,
                url: false,
            },
            Note => AttrKind::Text {
                max: 65535,
                url: false,
            },
            RecordingUrl => AttrKind::Text {
                max: 255,
                url: true,
            },
            VoicemailRecordingUrl => AttrKind::Text {
                max: 1024,
                url: true,
            },
            VendorCallId => AttrKind::Text {
                max: 63,
                url: false,
            },
            ShouldRecordCall => AttrKind::Bool,
            Tags => AttrKind::Tags,
        }
    }

    /// How the list query reaches it: whether it sorts, and how its filters are answered.
    /// This is the one home of that rule: the query parser, the projection's index columns and
    /// the error messages are all derived from it.
    pub const fn query_use(self) -> QueryUse {
        use Field::*;
        match self {
            AnsweredAt | CompletedAt | CreatedAt | DialedAt | ReturnedAt | StateChangedAt
            | UpdatedAt => QueryUse::SortTime,
            State | Outcome | From | To | RecordingUrl | UserCallType => QueryUse::SortText,
            Direction
            | ExternalVendor
            | SequenceAction
            | Uid
            | VendorCallId
            | VoicemailRecordingUrl => QueryUse::FilterText,
            ShouldRecordCall => QueryUse::Flag,
            Note => QueryUse::Note,
            Tags => QueryUse::Tags,
        }
    }

    /// Whether `sort` offers it (Outreach's sortable attributes and every date-time).
    pub const fn is_sortable(self) -> bool {
        matches!(self.query_use(), QueryUse::SortTime | QueryUse::SortText)
    }

    /// The attributes `sort` offers, in the order of [`Field::ALL`].
    pub fn sortable() -> impl Iterator<Item = Field> {
        Field::ALL
            .iter()
            .copied()
            .filter(|field| field.is_sortable())
    }

    /// Who may write it.
    pub fn ownership(self) -> Ownership {
        match self {
            Field::CreatedAt | Field::UpdatedAt | Field::StateChangedAt => Ownership::Server,
            Field::State | Field::Uid | Field::VoicemailRecordingUrl => Ownership::Telephony,
            _ => Ownership::Writable,
        }
    }
}

named_enum! {
    /// A relationship of a call.
    Relation {
        /// The account or opportunity the call belongs to; read-only to ordinary writers.
        AssociatedId = "associatedId",
        /// The batches the call is part of (to-many); read-only to ordinary writers.
        Batches = "batches",
        /// The call's disposition.
        CallDisposition = "callDisposition",
        /// The call's purpose.
        CallPurpose = "callPurpose",
        /// The Kaia CRM recording; read-only to ordinary writers.
        KaiaCrmRecording = "kaiaCrmRecording",
        /// The opportunity.
        Opportunity = "opportunity",
        /// The voicemail message played to the callee.
        OutboundVoicemail = "outboundVoicemail",
        /// The user's phone.
        Phone = "phone",
        /// The prospect's phone number.
        PhoneNumber = "phoneNumber",
        /// The prospect.
        Prospect = "prospect",
        /// The sequence.
        Sequence = "sequence",
        /// The sequence state.
        SequenceState = "sequenceState",
        /// The sequence step.
        SequenceStep = "sequenceStep",
        /// The task.
        Task = "task",
        /// The user.
        User = "user",
    }
}

impl Relation {
    /// The resource types a relationship may point at.
    pub fn target_types(self) -> &'static [&'static str] {
        use Relation::*;
        match self {
            AssociatedId => &["account", "opportunity"],
            Batches => &["batch"],
            CallDisposition => &["callDisposition"],
            CallPurpose => &["callPurpose"],
            KaiaCrmRecording => &["kaiaCrmRecording"],
            Opportunity => &["opportunity"],
            OutboundVoicemail => &["outboundVoicemail"],
            Phone => &["phone"],
            PhoneNumber => &["phoneNumber"],
            Prospect => &["prospect"],
            Sequence => &["sequence"],
            SequenceState => &["sequenceState"],
            SequenceStep => &["sequenceStep"],
            Task => &["task"],
            User => &["user"],
        }
    }

    /// Whether it holds a list of resources rather than one.
    pub fn is_to_many(self) -> bool {
        self == Relation::Batches
    }

    /// Who may write it. `associatedId`, `batches` and `kaiaCrmRecording` are read-only in
    /// Outreach: set by the system, here a writer with the voice right (the telephony and
    /// recording integrations), never by an ordinary writer.
    pub fn ownership(self) -> Ownership {
        match self {
            Relation::AssociatedId | Relation::Batches | Relation::KaiaCrmRecording => {
                Ownership::Telephony
            }
            _ => Ownership::Writable,
        }
    }

    /// Whether the list query can filter on its id (as Outreach allows: every to-one
    /// relationship except `associatedId`).
    pub const fn is_filterable(self) -> bool {
        !matches!(self, Relation::AssociatedId | Relation::Batches)
    }
}

/// How the list query reaches an attribute ([`Field::query_use`]). Every attribute can be
/// filtered on; only the first two can be sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryUse {
    /// A date-time that sorts and takes ranges.
    SortTime,
    /// A string that sorts and takes ranges.
    SortText,
    /// A string that filters (values and ranges) but does not sort.
    FilterText,
    /// A boolean: values only.
    Flag,
    /// A long free text: equality is answered by a hash of the value, confirmed on the row.
    Note,
    /// A list of strings: a call matches when any of its tags does.
    Tags,
}

/// The value of one attribute. Null is represented by absence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrValue {
    /// A string (plain, URL or one of an enumeration).
    Text(Text),
    /// A date-time.
    Time(Timestamp),
    /// A boolean.
    Bool(bool),
    /// A list of tags.
    Tags(Vec<Text>),
}

/// A call's text: up to 24 bytes held in place, longer ones on the heap. Most of a call's texts
/// are short (enumerations, phone numbers, tags, relationship types), and a `String` each was an
/// allocation per text for every call decoded, folded and dropped.
pub type Text = compact_str::CompactString;

/// The JSON form of [`AttrRef`], whose is the one the API, the events and the stored views all
/// write.
impl Serialize for AttrValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.borrowed().serialize(serializer)
    }
}

impl AttrValue {
    /// This value, borrowed.
    pub fn borrowed(&self) -> AttrRef<'_> {
        match self {
            AttrValue::Text(text) => AttrRef::Text(text),
            AttrValue::Time(at) => AttrRef::Time(*at),
            AttrValue::Bool(flag) => AttrRef::Bool(*flag),
            AttrValue::Tags(tags) => AttrRef::Tags(tags.iter().map(Text::as_str).collect()),
        }
    }

    /// The JSON form the API and the events use, as a value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// The value of one relationship. Null is represented by absence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RelValue {
    /// A to-one relationship.
    One(crate::call::ResourceRef),
    /// A to-many relationship (`batches`).
    Many(Vec<crate::call::ResourceRef>),
}

/// An object is a to-one value, an array a to-many one: told apart by the JSON's own kind, not
/// by trying each variant on a buffered copy (`serde(untagged)`), which was a tenth of decoding
/// an event.
impl<'de> Deserialize<'de> for RelValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RelValue, D::Error> {
        deserializer.deserialize_any(RelValueVisitor)
    }
}

struct RelValueVisitor;

impl<'de> serde::de::Visitor<'de> for RelValueVisitor {
    type Value = RelValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a resource identifier {\"type\", \"id\"} or an array of them")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RelValue, A::Error> {
        crate::call::ResourceRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            .map(RelValue::One)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RelValue, A::Error> {
        Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(RelValue::Many)
    }
}
