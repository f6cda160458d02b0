//! The soak's model and its checker: what the driver did (and so what must be true at the
//! end), what the sandbox shows at the end, and [`check`], a pure function from the two to the
//! violations. Every bot message and every message in a WhatsApp group must be accounted for by
//! the model; what a SIGKILL may repeat (a call in flight at the kill, at most once per kill
//! between the copies) is counted apart, everything else seen twice is a violation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What happened to a contact, as the driver saw it settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactFate {
    /// Invited, never tapped (or not yet let in).
    Invited,
    /// In the WhatsApp group.
    Joined,
    /// Joined, then left on WhatsApp.
    Left,
    /// Removed with `/wa remove` (barred).
    Removed,
}

/// One WhatsApp contact of a group, in the model.
#[derive(Debug, Clone)]
pub struct ContactModel {
    pub fate: ContactFate,
    /// Added with `/wa add` (not at create): the group gets a notice.
    pub added: bool,
    /// Invitations sent 1:1 (at create or `/wa add`, then each `/wa invite` after a leave).
    pub invitations: usize,
    /// "Invitation sent" answers in the room (`/wa add` and `/wa invite`).
    pub invited_posts: usize,
    /// Times let in (the room hears each once, the contact gets a confirmation each time).
    pub joins: usize,
    /// Times they left on WhatsApp.
    pub leaves: usize,
    /// Taps after leaving or being removed that WhatsApp turned into a join request: each is
    /// rejected by the bot, the room told once.
    pub rejected_requests: usize,
    /// `/wa invite` of them after their removal: refused in the room each time.
    pub refused_invites: usize,
}

impl ContactModel {
    pub fn new(added: bool) -> Self {
        Self {
            fate: ContactFate::Invited,
            added,
            invitations: 1,
            invited_posts: usize::from(added),
            joins: 0,
            leaves: 0,
            rejected_requests: 0,
            refused_invites: 0,
        }
    }
}

/// One group of the script, in the model.
#[derive(Debug, Clone, Default)]
pub struct GroupModel {
    pub index: usize,
    /// The name it was created with (unique in the run).
    pub name: String,
    /// The creator's IM with the bot, where `/wa create` went.
    pub im: String,
    /// Set once the driver saw the room and the WhatsApp group.
    pub room: Option<String>,
    pub wa: Option<String>,
    /// Contacts by WhatsApp id (digits).
    pub contacts: BTreeMap<String, ContactModel>,
    /// Tokens of the advisors' room messages, in the order posted.
    pub to_wa: Vec<String>,
    /// Tokens of the contacts' group messages, in the order written.
    pub to_room: Vec<String>,
    /// Every `/wa rename` (new names, unique in the run).
    pub renames: Vec<String>,
    /// Display names of advisors added with `/wa add @…` (one notice each time).
    pub advisors_added: Vec<String>,
    /// Display names of advisors removed with `/wa remove @…`.
    pub advisors_removed: Vec<String>,
    /// Display names of advisors promoted with `/wa promote`.
    pub promoted: Vec<String>,
    /// Display names of owners demoted with `/wa demote`.
    pub demoted: Vec<String>,
    /// `/wa info` commands.
    pub infos: usize,
    /// Strangers (never invited) whose tap of the group's link became a join request: each is
    /// rejected, the room told once.
    pub strangers: BTreeMap<String, usize>,
}

impl GroupModel {
    /// The name the group must have at the end.
    pub fn final_name(&self) -> &str {
        self.renames.last().map_or(self.name.as_str(), String::as_str)
    }
}

/// What the driver did and saw: the model the end state is checked against.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub groups: Vec<GroupModel>,
    /// Problems the driver met while playing (a step that never completed): violations too.
    pub script_violations: Vec<String>,
}

/// A message in a Symphony stream.
#[derive(Debug, Clone)]
pub struct Post {
    pub user: i64,
    pub text: String,
}

/// A message in a WhatsApp group or a phone's 1:1 inbox: its text, or a template's name and
/// parameters joined.
#[derive(Debug, Clone)]
pub struct WaMessage {
    pub from_business: bool,
    pub template: Option<String>,
    pub text: String,
}

/// A WhatsApp group at the end.
#[derive(Debug, Clone, Default)]
pub struct WaGroupView {
    pub subject: String,
    pub participants: Vec<String>,
    pub pending: Vec<String>,
    pub messages: Vec<WaMessage>,
}

/// How many messages each chat (stream id, WhatsApp group id, `inbox:<phone>`) had while the
/// bot was dead after a SIGKILL: a copy before and a copy after it is a call repeated at the
/// kill (at-least-once), not a duplicated decision.
pub type KillMark = HashMap<String, usize>;

/// What the sandbox shows at the end.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub bot: i64,
    /// Stream id → messages, oldest first.
    pub streams: HashMap<String, Vec<Post>>,
    /// Rooms in the pod (every one is the bot's: nobody else creates rooms in the soak).
    pub rooms: usize,
    /// WhatsApp group id → the group.
    pub groups: HashMap<String, WaGroupView>,
    /// Phone → its 1:1 inbox (messages sent to it as a person, not as a group member).
    pub inboxes: HashMap<String, Vec<WaMessage>>,
    pub marks: Vec<KillMark>,
    /// Webhook reorder faults the simulator applied: each may swap two adjacent webhooks, so
    /// two contacts' messages may reach a room in swapped order (Meta does not order webhooks
    /// either). Order is otherwise exact.
    pub reorders: usize,
}

/// The outcome of a check.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    /// Messages seen twice with a SIGKILL between the copies (a call in flight at the kill,
    /// performed again: the documented at-least-once to the APIs).
    pub repeats_at_kills: usize,
    /// Adjacent swaps in WhatsApp → room order, within the reorder faults' allowance.
    pub swaps: usize,
}

/// `+447911200302` in a text, whatever the spacing (`+44 7911 200302`).
fn mentions_phone(text: &str, digits: &str) -> bool {
    let compact: String = text.chars().filter(|c| *c != ' ' && *c != '\u{a0}').collect();
    compact.contains(&format!("+{digits}"))
}

/// The soak's chat tokens in a text (`soak-g3-s12`, `soak-g3-w4`).
fn tokens(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("soak-g"))
        .collect()
}

struct Checker<'a> {
    obs: &'a Observed,
    verdict: Verdict,
}

impl Checker<'_> {
    fn violation(&mut self, what: String) {
        self.verdict.violations.push(what);
    }

    /// Whether a kill separates positions `a` < `b` of `chat`.
    fn kill_between(&self, chat: &str, a: usize, b: usize) -> bool {
        self.obs.marks.iter().any(|m| m.get(chat).is_some_and(|&n| a < n && n <= b))
    }

    /// `positions` of something that must appear `want` times in `chat`: fewer is a loss, more
    /// is a duplicate unless a kill separates each extra copy from the one before.
    fn count(&mut self, chat: &str, positions: &[usize], want: usize, what: &str) {
        if positions.len() < want {
            self.violation(format!("{what}: seen {} times, expected {want}", positions.len()));
            return;
        }
        let extra = positions.len() - want;
        if extra == 0 {
            return;
        }
        let explained =
            positions.windows(2).filter(|w| self.kill_between(chat, w[0], w[1])).count();
        if explained >= extra {
            self.verdict.repeats_at_kills += extra;
        } else {
            self.violation(format!(
                "{what}: seen {} times, expected {want} (no SIGKILL between the copies)",
                positions.len()
            ));
        }
    }

    /// Order of the tokens seen in `chat` (first copies) against the order `want`; missing and
    /// unknown tokens are violations. `swaps_allowed`: adjacent swaps tolerated (and counted).
    fn order(
        &mut self,
        chat: &str,
        seen: &[(usize, String)],
        want: &[String],
        what: &str,
        swaps_allowed: &mut usize,
    ) {
        let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
        for (at, t) in seen {
            positions.entry(t.as_str()).or_default().push(*at);
        }
        let wanted: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        for (t, at) in &positions {
            if !wanted.contains(t) {
                self.violation(format!("{what}: unexpected message {t}"));
            } else {
                self.count(chat, at, 1, &format!("{what}: message {t}"));
            }
        }
        let mut first: Vec<(&str, usize)> = positions
            .iter()
            .filter(|(t, _)| wanted.contains(*t))
            .map(|(t, at)| (*t, at[0]))
            .collect();
        first.sort_by_key(|(_, at)| *at);
        let got: Vec<&str> = first.iter().map(|(t, _)| *t).collect();
        let missing: Vec<&str> =
            want.iter().map(String::as_str).filter(|t| !positions.contains_key(t)).collect();
        if !missing.is_empty() {
            self.violation(format!("{what}: {} lost: {}", missing.len(), missing.join(", ")));
        }
        let expected: Vec<&str> =
            want.iter().map(String::as_str).filter(|t| positions.contains_key(t)).collect();
        if got != expected {
            // Bubble sort counts adjacent swaps; only swapped neighbours are excused.
            let rank: HashMap<&str, usize> =
                expected.iter().enumerate().map(|(i, t)| (*t, i)).collect();
            let mut ranks: Vec<usize> = got.iter().filter_map(|t| rank.get(t).copied()).collect();
            let mut swaps = 0;
            let mut far = false;
            for (i, r) in ranks.iter().enumerate() {
                if r.abs_diff(i) > 1 {
                    far = true;
                }
            }
            for i in 0..ranks.len() {
                for j in 0..ranks.len().saturating_sub(1 + i) {
                    if ranks[j] > ranks[j + 1] {
                        ranks.swap(j, j + 1);
                        swaps += 1;
                    }
                }
            }
            if far || swaps > *swaps_allowed {
                self.violation(format!(
                    "{what}: out of order: got {} expected {}",
                    got.join(" "),
                    expected.join(" ")
                ));
            } else {
                *swaps_allowed -= swaps;
                self.verdict.swaps += swaps;
            }
        }
    }
}

/// Checks the end state against the model.
pub fn check(model: &Model, obs: &Observed) -> Verdict {
    let mut c = Checker { obs, verdict: Verdict::default() };
    for v in &model.script_violations {
        c.violation(v.clone());
    }
    let created = model.groups.iter().filter(|g| g.room.is_some()).count();
    if obs.rooms != created {
        c.violation(format!("{} rooms in the pod for {created} groups created", obs.rooms));
    }
    let wa_created = model.groups.iter().filter(|g| g.wa.is_some()).count();
    if obs.groups.len() != wa_created {
        c.violation(format!(
            "{} WhatsApp groups for {wa_created} groups created",
            obs.groups.len()
        ));
    }
    let mut swaps_allowed = obs.reorders;
    // The creators' IMs: one "Creating" answer per /wa create, nothing else.
    let mut ims: BTreeMap<&str, Vec<&GroupModel>> = BTreeMap::new();
    for g in &model.groups {
        ims.entry(g.im.as_str()).or_default().push(g);
    }
    for (im, groups) in ims {
        let posts = obs.streams.get(im).map(Vec::as_slice).unwrap_or_default();
        let mut per_group: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
        for (at, p) in posts.iter().enumerate().filter(|(_, p)| p.user == obs.bot) {
            match groups.iter().position(|g| p.text.contains(&format!("Creating {}:", g.name))) {
                Some(i) => per_group[i].push(at),
                None => c.violation(format!("unexpected bot message in an IM: {}", p.text)),
            }
        }
        for (g, at) in groups.iter().zip(per_group) {
            c.count(im, &at, 1, &format!("{}: the /wa create answer", g.name));
        }
    }
    for g in &model.groups {
        check_group(&mut c, g, &mut swaps_allowed);
    }
    c.verdict
}

fn check_group(c: &mut Checker<'_>, g: &GroupModel, swaps_allowed: &mut usize) {
    let label = g.name.as_str();
    let Some(room) = g.room.as_deref() else { return };
    let bot = c.obs.bot;
    let posts: Vec<(usize, &Post)> = c
        .obs
        .streams
        .get(room)
        .map(|p| p.iter().enumerate().filter(|(_, p)| p.user == bot).collect())
        .unwrap_or_default();
    // Every bot message in the room, classified.
    let mut ready = Vec::new();
    let mut infos = Vec::new();
    let mut relayed = Vec::new();
    let mut per_contact: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    let mut rejected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (at, p) in &posts {
        let text = p.text.as_str();
        let toks = tokens(text);
        let contact = |kind: &'static str| {
            g.contacts.keys().find(|d| mentions_phone(text, d)).map(|d| (d.as_str(), kind))
        };
        if !toks.is_empty() && toks.iter().all(|t| t.contains("-w")) {
            relayed.extend(toks.iter().map(|t| (*at, (*t).to_owned())));
        } else if !toks.is_empty() {
            c.violation(format!("{label}: unexpected bot message in the room: {text}"));
        } else if text.contains("is ready. Each contact received") {
            ready.push(*at);
        } else if text.contains("WhatsApp group, created") {
            infos.push(*at);
        } else if text.contains("A request to join the WhatsApp group from") {
            let who: String = text
                .split_whitespace()
                .find(|w| w.starts_with('+'))
                .unwrap_or_default()
                .trim_start_matches('+')
                .to_owned();
            rejected.entry(who).or_default().push(*at);
        } else if let Some(key) = text
            .contains(" joined the WhatsApp group.")
            .then(|| contact("joined"))
            .flatten()
            .or_else(|| {
                text.contains(" left the WhatsApp group.").then(|| contact("left")).flatten()
            })
            .or_else(|| {
                text.contains(" was removed from the WhatsApp group")
                    .then(|| contact("removed"))
                    .flatten()
            })
            .or_else(|| {
                text.starts_with("Invitation sent to").then(|| contact("invited")).flatten()
            })
            .or_else(|| {
                text.starts_with("No invitation was sent:").then(|| contact("refused")).flatten()
            })
        {
            per_contact.entry(key).or_default().push(*at);
        } else {
            c.violation(format!("{label}: unexpected bot message in the room: {text}"));
        }
    }
    c.count(room, &ready, 1, &format!("{label}: \"is ready\""));
    c.count(room, &infos, g.infos, &format!("{label}: /wa info answers"));
    let to_room: Vec<(usize, String)> = relayed;
    c.order(room, &to_room, &g.to_room, &format!("{label}: WhatsApp → room"), swaps_allowed);
    for (phone, m) in &g.contacts {
        let mut expect = |kind: &'static str, want: usize, what: &str| {
            let at = per_contact.remove(&(phone.as_str(), kind)).unwrap_or_default();
            c.count(room, &at, want, &format!("{label}: +{phone} {what} in the room"));
        };
        expect("joined", m.joins, "joined");
        expect("left", m.leaves, "left");
        expect("removed", usize::from(m.fate == ContactFate::Removed), "was removed");
        expect("invited", m.invited_posts, "\"Invitation sent\"");
        expect("refused", m.refused_invites, "invitation refused");
        let rejections = rejected.remove(phone.as_str()).unwrap_or_default();
        let want = m.rejected_requests + g.strangers.get(phone).copied().unwrap_or(0);
        c.count(room, &rejections, want, &format!("{label}: +{phone}'s requests rejected"));
    }
    for (phone, n) in &g.strangers {
        if g.contacts.contains_key(phone) {
            continue;
        }
        let rejections = rejected.remove(phone.as_str()).unwrap_or_default();
        c.count(room, &rejections, *n, &format!("{label}: stranger +{phone} rejected"));
    }
    for (who, _) in rejected {
        c.violation(format!("{label}: a request of +{who} was rejected that nobody made"));
    }
    for ((phone, kind), _) in per_contact {
        c.violation(format!("{label}: +{phone} {kind} in the room, which the model never did"));
    }

    // The WhatsApp group.
    let Some(wa) = g.wa.as_deref() else { return };
    let Some(group) = c.obs.groups.get(wa) else {
        c.violation(format!("{label}: WhatsApp group {wa} is gone"));
        return;
    };
    if group.subject != g.final_name() {
        c.violation(format!(
            "{label}: the WhatsApp subject is {:?}, expected {:?}",
            group.subject,
            g.final_name()
        ));
    }
    let joined: BTreeSet<&str> = g
        .contacts
        .iter()
        .filter(|(_, m)| m.fate == ContactFate::Joined)
        .map(|(p, _)| p.as_str())
        .collect();
    for p in &group.participants {
        if joined.contains(p.as_str()) {
            continue;
        }
        let why = match g.contacts.get(p).map(|m| m.fate) {
            Some(ContactFate::Removed) => "removed (barred)",
            Some(ContactFate::Left) => "left and not invited again",
            Some(_) => "never let in by the script",
            None => "never invited",
        };
        c.violation(format!("{label}: +{p} is in the WhatsApp group but was {why}"));
    }
    for p in &joined {
        if !group.participants.iter().any(|x| x == p) {
            c.violation(format!("{label}: +{p} joined but is not in the WhatsApp group"));
        }
    }
    if !group.pending.is_empty() {
        c.violation(format!("{label}: join requests left pending: {:?}", group.pending));
    }
    let mut to_wa = Vec::new();
    let mut notices: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (at, m) in group.messages.iter().enumerate() {
        let toks = tokens(&m.text);
        if !m.from_business {
            continue; // a contact's own message
        }
        if !toks.is_empty() && toks.iter().all(|t| t.contains("-s")) {
            to_wa.extend(toks.iter().map(|t| (at, (*t).to_owned())));
        } else if !toks.is_empty() {
            c.violation(format!("{label}: unexpected message in the WhatsApp group: {:?}", m.text));
        } else {
            notices.entry(m.text.clone()).or_default().push(at);
        }
    }
    c.order(wa, &to_wa, &g.to_wa, &format!("{label}: room → WhatsApp"), &mut 0);
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for n in &g.renames {
        *expected.entry(format!("The group is now called \"{n}\".")).or_default() += 1;
    }
    for (phone, m) in &g.contacts {
        if m.added {
            *expected.entry(format!("+{phone} was invited to the group.")).or_default() += 1;
        }
        if m.fate == ContactFate::Removed {
            *expected.entry(format!("+{phone} was removed from the group.")).or_default() += 1;
        }
    }
    for a in &g.advisors_added {
        *expected.entry(format!("{a} (advisor) joined the group.")).or_default() += 1;
    }
    for a in &g.advisors_removed {
        *expected.entry(format!("{a} (advisor) left the group.")).or_default() += 1;
    }
    for a in &g.promoted {
        *expected.entry(format!("{a} is now an owner of the group.")).or_default() += 1;
    }
    for a in &g.demoted {
        *expected.entry(format!("{a} is no longer an owner of the group.")).or_default() += 1;
    }
    for (text, want) in &expected {
        let at = notices.remove(text).unwrap_or_default();
        c.count(wa, &at, *want, &format!("{label}: notice {text:?}"));
    }
    for (text, _) in notices {
        c.violation(format!("{label}: unexpected message in the WhatsApp group: {text:?}"));
    }

    // Each contact's 1:1 messages: one invitation, one confirmation per join.
    for (phone, m) in &g.contacts {
        let chat = format!("inbox:{phone}");
        let inbox = c.obs.inboxes.get(phone).cloned().unwrap_or_default();
        let invitations: Vec<usize> = inbox
            .iter()
            .enumerate()
            .filter(|(_, x)| x.template.as_deref() == Some("group_invite_link"))
            .map(|(i, _)| i)
            .collect();
        c.count(&chat, &invitations, m.invitations, &format!("{label}: +{phone}'s invitations"));
        let confirmations: Vec<usize> = inbox
            .iter()
            .enumerate()
            .filter(|(_, x)| x.text.contains("You joined the WhatsApp group"))
            .map(|(i, _)| i)
            .collect();
        c.count(&chat, &confirmations, m.joins, &format!("{label}: +{phone}'s join confirmations"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: i64 = 1;
    const ALICE: i64 = 2;

    fn bot(text: &str) -> Post {
        Post { user: BOT, text: text.to_owned() }
    }

    fn notice(text: &str) -> WaMessage {
        WaMessage {
            from_business: true,
            template: Some("group_update".into()),
            text: text.to_owned(),
        }
    }

    fn invitation() -> WaMessage {
        WaMessage {
            from_business: true,
            template: Some("group_invite_link".into()),
            text: "https://chat.whatsapp.com/x".into(),
        }
    }

    fn joined_note() -> WaMessage {
        WaMessage {
            from_business: true,
            template: Some("group_update".into()),
            text: "You joined the WhatsApp group \"Soak g0\".".into(),
        }
    }

    /// A group where everything went right: Dana joined and wrote, Eli was added and removed,
    /// Alice wrote, the group was renamed.
    fn good() -> (Model, Observed) {
        let dana = "447911200001";
        let eli = "447911200002";
        let mut g = GroupModel {
            index: 0,
            name: "Soak g0".into(),
            im: "im".into(),
            room: Some("room".into()),
            wa: Some("wa".into()),
            to_wa: vec!["soak-g0-s1".into(), "soak-g0-s2".into()],
            to_room: vec!["soak-g0-w1".into(), "soak-g0-w2".into()],
            renames: vec!["Soak g0 r1".into()],
            ..GroupModel::default()
        };
        g.contacts.insert(
            dana.into(),
            ContactModel { fate: ContactFate::Joined, joins: 1, ..ContactModel::new(false) },
        );
        g.contacts.insert(
            eli.into(),
            ContactModel { fate: ContactFate::Removed, ..ContactModel::new(true) },
        );
        let model = Model { groups: vec![g], script_violations: Vec::new() };
        let mut obs = Observed { bot: BOT, rooms: 1, ..Observed::default() };
        obs.streams.insert(
            "im".into(),
            vec![
                Post { user: ALICE, text: "/wa create \"Soak g0\" +447911200001".into() },
                bot("Creating Soak g0: a Symphony room and its WhatsApp group."),
            ],
        );
        obs.streams.insert("room".into(), vec![
            bot("WhatsApp group Soak g0 is ready. Each contact received a personal invitation; only they can join."),
            bot("+447911200001 joined the WhatsApp group."),
            bot("Pat (+44 7911 200001): soak-g0-w1"),
            Post { user: ALICE, text: "soak-g0-s1".into() },
            bot("Invitation sent to +447911200002."),
            bot("Pat (+44 7911 200001): soak-g0-w2"),
            Post { user: ALICE, text: "soak-g0-s2".into() },
            bot("+447911200002 was removed from the WhatsApp group and can never join it again."),
        ]);
        obs.groups.insert(
            "wa".into(),
            WaGroupView {
                subject: "Soak g0 r1".into(),
                participants: vec![dana.into()],
                pending: Vec::new(),
                messages: vec![
                    WaMessage { from_business: false, template: None, text: "soak-g0-w1".into() },
                    WaMessage {
                        from_business: true,
                        template: None,
                        text: "*Alice Ng*: soak-g0-s1".into(),
                    },
                    notice("+447911200002 was invited to the group."),
                    WaMessage { from_business: false, template: None, text: "soak-g0-w2".into() },
                    WaMessage {
                        from_business: true,
                        template: None,
                        text: "*Alice Ng*: soak-g0-s2".into(),
                    },
                    notice("The group is now called \"Soak g0 r1\"."),
                    notice("+447911200002 was removed from the group."),
                ],
            },
        );
        obs.inboxes.insert(dana.into(), vec![invitation(), joined_note()]);
        obs.inboxes.insert(eli.into(), vec![invitation()]);
        (model, obs)
    }

    fn wa(obs: &mut Observed) -> &mut WaGroupView {
        obs.groups.get_mut("wa").expect("the group")
    }

    fn stream<'a>(obs: &'a mut Observed, id: &str) -> &'a mut Vec<Post> {
        obs.streams.get_mut(id).expect("the stream")
    }

    fn violations(model: &Model, obs: &Observed) -> Vec<String> {
        check(model, obs).violations
    }

    #[test]
    fn a_good_end_state_passes() {
        let (model, obs) = good();
        assert_eq!(violations(&model, &obs), Vec::<String>::new());
    }

    #[test]
    fn a_barred_contact_in_the_group_is_a_violation() {
        let (model, mut obs) = good();
        wa(&mut obs).participants.push("447911200002".into());
        let v = violations(&model, &obs);
        assert!(
            v.iter().any(|v| v.contains("+447911200002 is in the WhatsApp group but was removed")),
            "{v:?}"
        );
    }

    #[test]
    fn an_uninvited_participant_is_a_violation() {
        let (model, mut obs) = good();
        wa(&mut obs).participants.push("447911299999".into());
        let v = violations(&model, &obs);
        assert!(v.iter().any(|v| v.contains("never invited")), "{v:?}");
    }

    #[test]
    fn a_lost_or_duplicated_or_reordered_message_is_a_violation() {
        let (model, mut obs) = good();
        let g = obs.groups.get_mut("wa").expect("group");
        g.messages.remove(1); // soak-g0-s1 lost
        let v = violations(&model, &obs);
        assert!(v.iter().any(|v| v.contains("room → WhatsApp: 1 lost: soak-g0-s1")), "{v:?}");

        let (model, mut obs) = good();
        let room = obs.streams.get_mut("room").expect("room");
        room.push(bot("Pat (+44 7911 200001): soak-g0-w2"));
        let v = violations(&model, &obs);
        assert!(v.iter().any(|v| v.contains("message soak-g0-w2: seen 2 times")), "{v:?}");

        let (model, mut obs) = good();
        let g = obs.groups.get_mut("wa").expect("group");
        g.messages.swap(1, 4);
        let v = violations(&model, &obs);
        assert!(v.iter().any(|v| v.contains("room → WhatsApp: out of order")), "{v:?}");
    }

    #[test]
    fn a_copy_after_a_kill_is_a_repeat_and_a_reorder_fault_excuses_one_swap() {
        let (model, mut obs) = good();
        let room = obs.streams.get_mut("room").expect("room");
        let n = room.len();
        room.push(bot("Pat (+44 7911 200001): soak-g0-w2"));
        obs.marks.push(KillMark::from([("room".to_owned(), n)]));
        let verdict = check(&model, &obs);
        assert_eq!(verdict.violations, Vec::<String>::new());
        assert_eq!(verdict.repeats_at_kills, 1);

        let (model, mut obs) = good();
        obs.streams.get_mut("room").expect("room").swap(2, 5);
        assert_eq!(violations(&model, &obs).len(), 1, "a swap without a reorder fault");
        obs.reorders = 1;
        let verdict = check(&model, &obs);
        assert_eq!(verdict.violations, Vec::<String>::new());
        assert_eq!(verdict.swaps, 1);
    }

    #[test]
    fn a_missing_or_doubled_notice_or_answer_is_a_violation() {
        let (model, mut obs) = good();
        wa(&mut obs).messages.retain(|m| !m.text.contains("now called"));
        let v = violations(&model, &obs);
        assert!(v.iter().any(|v| v.contains("now called") && v.contains("seen 0 times")), "{v:?}");

        let (model, mut obs) = good();
        wa(&mut obs).messages.push(notice("+447911200002 was removed from the group."));
        let v = violations(&model, &obs);
        assert!(
            v.iter()
                .any(|v| v.contains("was removed from the group") && v.contains("seen 2 times")),
            "{v:?}"
        );

        let (model, mut obs) = good();
        stream(&mut obs, "im").push(bot("Creating Soak g0: again"));
        let v = violations(&model, &obs);
        assert!(v.iter().any(|v| v.contains("the /wa create answer: seen 2 times")), "{v:?}");

        let (model, mut obs) = good();
        stream(&mut obs, "room").push(bot("Could not add Bob: 500"));
        let v = violations(&model, &obs);
        assert!(
            v.iter().any(|v| v.contains("unexpected bot message in the room: Could not")),
            "{v:?}"
        );
    }

    #[test]
    fn a_second_room_or_group_is_a_violation() {
        let (model, mut obs) = good();
        obs.rooms = 2;
        obs.groups.insert("wa2".into(), WaGroupView::default());
        let v = violations(&model, &obs);
        assert!(v.iter().any(|v| v.contains("2 rooms in the pod for 1 groups")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("2 WhatsApp groups for 1 groups")), "{v:?}");
    }
}
