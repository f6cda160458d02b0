//! The product's rules, as pure functions over plain data: which kind of group a request makes,
//! who may join, who may be added, who may manage. No I/O and no clock: callers pass what they
//! know (the live room membership, the stored contact states) and act on the decision.

use crate::groups::{ContactRecord, ContactState, E164, GroupKind, UserId};

/// At most this many WhatsApp contacts in a native group (Meta's Groups API limit).
pub const MAX_NATIVE_CONTACTS: usize = 8;

/// Why a request became a standard group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardReason {
    TooManyContacts(usize),
    Requested,
    NativeGroupsDisabled,
}

impl std::fmt::Display for StandardReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StandardReason::TooManyContacts(n) => write!(
                f,
                "more than {MAX_NATIVE_CONTACTS} WhatsApp contacts ({n}): created as a standard group"
            ),
            StandardReason::Requested => {
                f.write_str("not native, as asked: created as a standard group")
            }
            StandardReason::NativeGroupsDisabled => f.write_str(
                "native WhatsApp groups are turned off here: created as a standard group",
            ),
        }
    }
}

/// Native unless there are too many contacts, `--standard` was asked, or the feature is off.
pub fn group_kind(
    contacts: usize,
    standard_requested: bool,
    native_enabled: bool,
) -> (GroupKind, Option<StandardReason>) {
    if !native_enabled {
        (GroupKind::Standard, Some(StandardReason::NativeGroupsDisabled))
    } else if standard_requested {
        (GroupKind::Standard, Some(StandardReason::Requested))
    } else if contacts > MAX_NATIVE_CONTACTS {
        (GroupKind::Standard, Some(StandardReason::TooManyContacts(contacts)))
    } else {
        (GroupKind::Native, None)
    }
}

/// What to do with a WhatsApp join request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinDecision {
    Approve,
    Reject(RejectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Removed from this group before: never again.
    Barred,
    /// Not invited to this group (a forwarded link, a stranger).
    NotInvited,
    /// Left on their own: only a fresh `/wa invite` lets them back.
    LeftWithoutNewInvite,
    /// The group has its 8 contacts already.
    Full,
    /// The request carried no phone number to check.
    Unidentified,
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::Barred => "they were removed from this group and are barred from it",
            RejectReason::NotInvited => "they were not invited to this group",
            RejectReason::LeftWithoutNewInvite => {
                "they left this group; only a new /wa invite lets them back"
            }
            RejectReason::Full => "the group already has 8 WhatsApp contacts",
            RejectReason::Unidentified => "the request did not say who is asking",
        })
    }
}

/// Only an invited (or already requesting) contact who is not barred gets in, and only while
/// the group has room.
pub fn join_decision(requester: Option<&E164>, contacts: &[ContactRecord]) -> JoinDecision {
    let Some(phone) = requester else { return JoinDecision::Reject(RejectReason::Unidentified) };
    let Some(record) = contacts.iter().find(|c| &c.phone == phone) else {
        return JoinDecision::Reject(RejectReason::NotInvited);
    };
    if record.barred || record.state == ContactState::Removed {
        return JoinDecision::Reject(RejectReason::Barred);
    }
    match record.state {
        ContactState::Invited | ContactState::Requested => {
            let joined = contacts.iter().filter(|c| c.state == ContactState::Joined).count();
            if joined >= MAX_NATIVE_CONTACTS {
                JoinDecision::Reject(RejectReason::Full)
            } else {
                JoinDecision::Approve
            }
        }
        // Already in: approving again is harmless.
        ContactState::Joined => JoinDecision::Approve,
        ContactState::Left => JoinDecision::Reject(RejectReason::LeftWithoutNewInvite),
        ContactState::Removed => JoinDecision::Reject(RejectReason::Barred),
    }
}

/// Why a contact cannot be added or invited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddRefusal {
    Barred(E164),
    AlreadyIn(E164),
    /// Adding these would take a native group past 8 contacts.
    TooMany {
        current: usize,
        adding: usize,
    },
    /// The bot's own business number.
    OwnNumber(E164),
}

impl std::fmt::Display for AddRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddRefusal::Barred(p) => {
                write!(f, "{p} was removed from this group and can never join it again")
            }
            AddRefusal::AlreadyIn(p) => write!(f, "{p} is already in this group"),
            AddRefusal::TooMany { current, adding } => write!(
                f,
                "a native WhatsApp group holds at most {MAX_NATIVE_CONTACTS} contacts: it has {current}, adding {adding} is too many"
            ),
            AddRefusal::OwnNumber(p) => write!(f, "{p} is the bot's own WhatsApp business number"),
        }
    }
}

/// Checks `/wa add` / `/wa invite` of contacts. `resend` (`/wa invite`) allows contacts already
/// invited or who left (a new invitation); `/wa add` allows only new ones. Every refusal is listed.
pub fn check_add_contacts(
    kind: GroupKind,
    existing: &[ContactRecord],
    adding: &[E164],
    business: Option<&E164>,
    resend: bool,
) -> Result<(), Vec<AddRefusal>> {
    let mut refusals = Vec::new();
    let mut new = 0;
    for phone in adding {
        if Some(phone) == business {
            refusals.push(AddRefusal::OwnNumber(phone.clone()));
            continue;
        }
        match existing.iter().find(|c| &c.phone == phone) {
            Some(c) if c.barred || c.state == ContactState::Removed => {
                refusals.push(AddRefusal::Barred(phone.clone()))
            }
            Some(c) if c.state == ContactState::Joined => {
                refusals.push(AddRefusal::AlreadyIn(phone.clone()))
            }
            Some(_) if resend => {}
            Some(_) => refusals.push(AddRefusal::AlreadyIn(phone.clone())),
            None => new += 1,
        }
    }
    let current = existing
        .iter()
        .filter(|c| !c.barred && c.state != ContactState::Removed && c.state != ContactState::Left)
        .count();
    if kind == GroupKind::Native && current + new > MAX_NATIVE_CONTACTS {
        refusals.push(AddRefusal::TooMany { current, adding: new });
    }
    if refusals.is_empty() { Ok(()) } else { Err(refusals) }
}

/// Room owners manage the group: checked against the live membership, never a cache.
pub fn may_manage(actor: UserId, owners: &[UserId]) -> bool {
    owners.contains(&actor)
}

/// Whether an advisor is entitled: `*`, their user id or their email is on the list.
pub fn entitled(advisors: &[String], user: UserId, email: Option<&str>) -> bool {
    advisors.iter().any(|entry| {
        let entry = entry.trim();
        entry == "*"
            || entry == user.to_string()
            || email.is_some_and(|e| e.eq_ignore_ascii_case(entry))
    })
}

/// Once every invitee has joined, the invite link should be reset so a leaked link is dead.
pub fn all_invitees_joined(contacts: &[ContactRecord]) -> bool {
    let live: Vec<_> = contacts
        .iter()
        .filter(|c| !c.barred && c.state != ContactState::Removed && c.state != ContactState::Left)
        .collect();
    !live.is_empty() && live.iter().all(|c| c.state == ContactState::Joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> E164 {
        E164::parse(&format!("+4479111234{i:02}")).expect("valid")
    }

    fn c(i: u32, state: ContactState, barred: bool) -> ContactRecord {
        ContactRecord { phone: n(i), state, barred, bsuid: None, name: None }
    }

    #[test]
    fn kinds_and_reasons() {
        assert_eq!(group_kind(8, false, true), (GroupKind::Native, None));
        assert_eq!(group_kind(0, false, true), (GroupKind::Native, None));
        assert_eq!(
            group_kind(9, false, true),
            (GroupKind::Standard, Some(StandardReason::TooManyContacts(9)))
        );
        assert_eq!(
            group_kind(2, true, true),
            (GroupKind::Standard, Some(StandardReason::Requested))
        );
        assert_eq!(
            group_kind(2, false, false),
            (GroupKind::Standard, Some(StandardReason::NativeGroupsDisabled))
        );
        assert!(
            StandardReason::TooManyContacts(9)
                .to_string()
                .starts_with("more than 8 WhatsApp contacts")
        );
    }

    #[test]
    fn only_invited_unbarred_contacts_join() {
        use ContactState::*;
        let contacts = vec![
            c(1, Invited, false),
            c(2, Requested, false),
            c(3, Removed, true),
            c(4, Left, false),
            c(5, Joined, false),
        ];
        let cases = [
            (Some(n(1)), JoinDecision::Approve),
            (Some(n(2)), JoinDecision::Approve),
            (Some(n(5)), JoinDecision::Approve),
            (Some(n(3)), JoinDecision::Reject(RejectReason::Barred)),
            (Some(n(4)), JoinDecision::Reject(RejectReason::LeftWithoutNewInvite)),
            (Some(n(9)), JoinDecision::Reject(RejectReason::NotInvited)),
            (None, JoinDecision::Reject(RejectReason::Unidentified)),
        ];
        for (who, expected) in cases {
            assert_eq!(join_decision(who.as_ref(), &contacts), expected, "{who:?}");
        }
        // A barred flag wins over any state (re-invited by mistake, say).
        assert_eq!(
            join_decision(Some(&n(1)), &[c(1, Invited, true)]),
            JoinDecision::Reject(RejectReason::Barred)
        );
        let full: Vec<_> =
            (1..=8).map(|i| c(i, Joined, false)).chain([c(9, Invited, false)]).collect();
        assert_eq!(join_decision(Some(&n(9)), &full), JoinDecision::Reject(RejectReason::Full));
    }

    #[test]
    fn adding_contacts_is_checked() {
        use ContactState::*;
        let existing =
            vec![c(1, Joined, false), c(2, Removed, true), c(3, Invited, false), c(4, Left, false)];
        assert_eq!(check_add_contacts(GroupKind::Native, &existing, &[n(5)], None, false), Ok(()));
        assert_eq!(
            check_add_contacts(GroupKind::Native, &existing, &[n(2), n(1)], None, false),
            Err(vec![AddRefusal::Barred(n(2)), AddRefusal::AlreadyIn(n(1))])
        );
        // /wa invite resends to the invited and to leavers, never to the barred.
        assert_eq!(
            check_add_contacts(GroupKind::Native, &existing, &[n(3), n(4)], None, true),
            Ok(())
        );
        assert_eq!(
            check_add_contacts(GroupKind::Native, &existing, &[n(2)], None, true),
            Err(vec![AddRefusal::Barred(n(2))])
        );
        // A native group cannot grow past 8; a standard one can.
        let seven: Vec<_> = (1..=7).map(|i| c(i, Joined, false)).collect();
        assert_eq!(
            check_add_contacts(GroupKind::Native, &seven, &[n(20), n(21)], None, false),
            Err(vec![AddRefusal::TooMany { current: 7, adding: 2 }])
        );
        assert_eq!(
            check_add_contacts(GroupKind::Standard, &seven, &[n(20), n(21)], None, false),
            Ok(())
        );
        assert_eq!(
            check_add_contacts(GroupKind::Native, &[], &[n(7)], Some(&n(7)), false),
            Err(vec![AddRefusal::OwnNumber(n(7))])
        );
    }

    #[test]
    fn owners_entitlements_and_link_reset() {
        assert!(may_manage(UserId(1), &[UserId(2), UserId(1)]));
        assert!(!may_manage(UserId(3), &[UserId(2), UserId(1)]));
        let list = vec!["1001".to_owned(), "Bob@Example.com".to_owned()];
        assert!(entitled(&list, UserId(1001), None));
        assert!(entitled(&list, UserId(7), Some("bob@example.com")));
        assert!(!entitled(&list, UserId(7), Some("eve@example.com")));
        assert!(entitled(&["*".to_owned()], UserId(7), None));
        use ContactState::*;
        assert!(all_invitees_joined(&[
            c(1, Joined, false),
            c(2, Removed, true),
            c(3, Left, false)
        ]));
        assert!(!all_invitees_joined(&[c(1, Joined, false), c(2, Invited, false)]));
        assert!(!all_invitees_joined(&[]));
    }
}
