//! The scripted population: one actor per group, each with its own RNG seeded from the run's
//! seed and the group's index, so the same seed plays the same script. An actor creates its
//! group, then, until the deadline, picks among what its people may do now (from its model, not
//! from timing): contacts tap their invitation, chat, leave and try to come back; advisors chat;
//! the creator renames, adds and removes contacts and advisors, promotes and demotes, invites
//! again a contact who left (and, refused, one who was removed), asks for `/wa info`;
//! strangers tap a leaked link. Groups are created at random times over the first half of the
//! run, so creations meet faults and kills as well. A step that changes who is where waits
//! (bounded) for its effect before the next, so the model always says what is true; chat does
//! not wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use super::model::{ContactFate, ContactModel, GroupModel};
use crate::sandbox::mock_pod::MockPod;
use crate::sandbox::wa_sim::WhatsAppSim;

/// What every actor shares.
pub(crate) struct Ctx {
    pub pod: Arc<MockPod>,
    pub sim: Arc<WhatsAppSim>,
    pub http: reqwest::Client,
    pub bot: i64,
    /// Advisors: user id and display name.
    pub advisors: Vec<(i64, String)>,
    /// Each advisor's IM with the bot.
    pub ims: BTreeMap<i64, String>,
    /// How long a step waits for its effect.
    pub step_timeout: Duration,
    pub deadline: Instant,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pod: Arc<MockPod>,
        sim: Arc<WhatsAppSim>,
        bot: i64,
        advisors: Vec<(i64, String)>,
        ims: BTreeMap<i64, String>,
        step_timeout: Duration,
        deadline: Instant,
    ) -> Self {
        Self {
            pod,
            sim,
            http: reqwest::Client::new(),
            bot,
            advisors,
            ims,
            step_timeout,
            deadline,
            counts: Mutex::default(),
        }
    }

    pub fn count(&self, what: &'static str) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry(what).or_default() += 1;
    }

    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A control-API call to the simulator (what it has no in-process call for).
    pub async fn sim_post(&self, path: &str, body: serde_json::Value) -> Result<(), String> {
        let url = format!("{}/_sandbox/wa{path}", self.sim.url());
        control_post(&self.http, &url, body).await
    }

    /// A control-API call to the mock pod.
    pub async fn pod_post(&self, path: &str, body: serde_json::Value) -> Result<(), String> {
        let url = format!("{}/_sandbox{path}", self.pod.url());
        control_post(&self.http, &url, body).await
    }
}

async fn control_post(
    http: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> Result<(), String> {
    let resp = http.post(url).json(&body).send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    Err(format!("{url}: {status}: {text}"))
}

/// A contact's WhatsApp id: group `g`'s `c`-th contact (`+44 7911 2ggg cc`, valid UK mobiles).
pub fn contact_phone(g: usize, c: usize) -> String {
    format!("4479112{:03}{:02}", g % 1000, c % 100)
}

/// A stranger to group `g` (never invited).
fn stranger_phone(g: usize, s: usize) -> String {
    format!("4479113{:03}{:02}", g % 1000, s % 100)
}

/// The most contacts a group gets over its life (a native group holds 8).
const MAX_CONTACTS: usize = 8;

/// One group's actor.
struct Actor {
    ctx: Arc<Ctx>,
    rng: StdRng,
    g: GroupModel,
    creator: i64,
    /// Advisors in the room: user id → owner.
    members: BTreeMap<i64, bool>,
    /// Contacts that tapped (or were removed, or tried to come back): not tapped again.
    tapped: BTreeMap<String, bool>,
    next_contact: usize,
    next_stranger: usize,
    next_message: usize,
    violations: Vec<String>,
}

/// Plays group `index` until the deadline; returns its model and what went wrong while playing.
pub(crate) async fn group_actor(
    ctx: Arc<Ctx>,
    index: usize,
    seed: u64,
) -> (GroupModel, Vec<String>) {
    let mixed = seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let advisors = ctx.advisors.len().max(1);
    let creator = ctx.advisors.get(index % advisors).map_or(0, |a| a.0);
    let mut actor = Actor {
        g: GroupModel {
            index,
            name: format!("Soak g{index}"),
            im: ctx.ims.get(&creator).cloned().unwrap_or_default(),
            ..GroupModel::default()
        },
        ctx,
        rng: StdRng::seed_from_u64(mixed),
        creator,
        members: BTreeMap::new(),
        tapped: BTreeMap::new(),
        next_contact: 0,
        next_stranger: 0,
        next_message: 0,
        violations: Vec::new(),
    };
    // Groups are created over the first half of the run, so that creations meet faults and
    // kills too (a lost answer to a create call, a kill between its steps).
    let left = actor.ctx.deadline.saturating_duration_since(Instant::now());
    let start_ms = u64::try_from(left.as_millis() / 2).unwrap_or(u64::MAX).max(1);
    tokio::time::sleep(Duration::from_millis(actor.rng.gen_range(0..start_ms))).await;
    if let Err(e) = actor.create().await {
        actor.violations.push(format!("{}: {e}", actor.g.name));
        return (actor.g, actor.violations);
    }
    while Instant::now() < actor.ctx.deadline {
        if let Err(e) = actor.step().await {
            actor.violations.push(format!("{}: {e}", actor.g.name));
            break;
        }
        let pause = actor.rng.gen_range(100..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    (actor.g, actor.violations)
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Tap,
    GroupMessage,
    RoomMessage,
    Leave,
    ComeBack,
    Rename,
    AddContact,
    RemoveContact,
    AddAdvisor,
    RemoveAdvisor,
    Promote,
    Demote,
    Reinvite,
    InviteBarred,
    Info,
    Stranger,
}

fn mention(uid: i64) -> String {
    format!("<mention uid=\"{uid}\"/>")
}

impl Actor {
    fn room(&self) -> &str {
        self.g.room.as_deref().unwrap_or_default()
    }

    fn wa(&self) -> &str {
        self.g.wa.as_deref().unwrap_or_default()
    }

    fn name_of(&self, uid: i64) -> String {
        self.ctx.advisors.iter().find(|a| a.0 == uid).map(|a| a.1.clone()).unwrap_or_default()
    }

    /// Polls `check` every 50 ms until it gives a value, at most the step timeout.
    async fn until<T>(
        &self,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + self.ctx.step_timeout;
        loop {
            if let Some(v) = check() {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {:?} waiting for {what}",
                    self.ctx.step_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn post(&self, stream: &str, uid: i64, body: &str) -> Result<(), String> {
        self.ctx
            .pod
            .post_message(stream, uid, &format!("<messageML>{body}</messageML>"))
            .map(|_| ())
            .map_err(|e| format!("posting {body:?}: {e}"))
    }

    /// `/wa …` typed by the creator in the room.
    fn command(&self, body: &str) -> Result<(), String> {
        self.post(self.room(), self.creator, body)
    }

    /// The room's members as the pod lists them: user id → owner.
    fn room_members(&self) -> BTreeMap<i64, bool> {
        let room = self.room();
        self.ctx
            .pod
            .streams()
            .into_iter()
            .find(|s| s["streamId"] == room)
            .and_then(|s| s["members"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| Some((m["userId"].as_i64()?, m["owner"].as_bool().unwrap_or(false))))
            .collect()
    }

    fn participants(&self) -> Vec<String> {
        self.ctx
            .sim
            .group(self.wa())
            .and_then(|g| g["participants"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect()
    }

    /// The latest invitation link a phone received for this group, if any.
    fn invitation(&self, phone: &str) -> Option<String> {
        self.ctx.sim.inbox(phone).iter().rev().find_map(|m| {
            (m["template"]["name"] == "group_invite_link" && m["groupId"].is_null())
                .then(|| m["template"]["params"][0].as_str().map(str::to_owned))
                .flatten()
        })
    }

    /// How many invitations a phone received 1:1.
    fn invitations(&self, phone: &str) -> usize {
        self.ctx
            .sim
            .inbox(phone)
            .iter()
            .filter(|m| m["template"]["name"] == "group_invite_link" && m["groupId"].is_null())
            .count()
    }

    /// The room's "… joined the WhatsApp group" posts about a phone.
    fn joined_posts(&self, phone: &str) -> usize {
        self.bot_said_count(&format!("+{phone}joinedtheWhatsAppgroup"))
            + self.bot_said_count(&format!("+{phone})joinedtheWhatsAppgroup"))
    }

    fn bot_said(&self, needle: &str) -> bool {
        self.bot_said_count(needle) > 0
    }

    /// The bot's messages in the room containing `needle` (spaces ignored).
    fn bot_said_count(&self, needle: &str) -> usize {
        let bot = self.ctx.bot;
        self.ctx
            .pod
            .messages(self.room())
            .iter()
            .filter(|m| {
                m.user == bot
                    && m.text.chars().filter(|c| *c != ' ').collect::<String>().contains(needle)
            })
            .count()
    }

    fn new_contact(&mut self) -> String {
        let phone = contact_phone(self.g.index, self.next_contact);
        self.next_contact += 1;
        phone
    }

    async fn create(&mut self) -> Result<(), String> {
        let n = self.rng.gen_range(1..=4);
        let mut contacts = Vec::new();
        for _ in 0..n {
            let p = self.new_contact();
            self.g.contacts.insert(p.clone(), ContactModel::new(false));
            contacts.push(format!("+{p}"));
        }
        self.members.insert(self.creator, true);
        let others: Vec<i64> =
            self.ctx.advisors.iter().map(|a| a.0).filter(|a| *a != self.creator).collect();
        let mut mentions = String::new();
        if !others.is_empty() && self.rng.gen_bool(0.5) {
            let other = others[self.rng.gen_range(0..others.len())];
            self.members.insert(other, false);
            mentions = format!("{} ", mention(other));
        }
        let name = self.g.name.clone();
        let im = self.g.im.clone();
        self.post(
            &im,
            self.creator,
            &format!("/wa create \"{name}\" {mentions}{}", contacts.join(" ")),
        )?;
        self.ctx.count("command /wa create");
        let room = self
            .until("the room", || {
                self.ctx.pod.streams().into_iter().find_map(|s| {
                    (s["type"] == "ROOM" && s["name"] == name.as_str())
                        .then(|| s["streamId"].as_str().map(str::to_owned))
                        .flatten()
                })
            })
            .await?;
        self.g.room = Some(room);
        let wa = self
            .until("the WhatsApp group", || {
                self.ctx.sim.groups().into_iter().find_map(|g| {
                    (g["subject"] == name.as_str())
                        .then(|| g["id"].as_str().map(str::to_owned))
                        .flatten()
                })
            })
            .await?;
        self.g.wa = Some(wa);
        // The creator must be an owner (and the other advisor in) before commands come.
        let want = self.members.clone();
        self.until("the room's members and owner", || {
            let now = self.room_members();
            want.iter().all(|(u, o)| now.get(u) == Some(o)).then_some(())
        })
        .await?;
        Ok(())
    }

    fn choose(&mut self) -> Option<Action> {
        let c = &self.g.contacts;
        let untapped = c.keys().filter(|p| !self.tapped.contains_key(*p)).count();
        let joined = c.values().filter(|m| m.fate == ContactFate::Joined).count();
        let left_back = c
            .iter()
            .filter(|(p, m)| m.fate == ContactFate::Left && self.tapped.get(*p) == Some(&true))
            .count();
        let removable = self.removable().len();
        // WhatsApp takes no message for a group with nobody but the business in it (131020):
        // what sends to the group waits for a first contact, and the last one stays.
        let sends = joined > 0;
        let outside = self.ctx.advisors.iter().filter(|a| !self.members.contains_key(&a.0)).count();
        let plain = self.members.values().filter(|o| !**o).count();
        let demotable = self.demotable().len();
        let left = c.values().filter(|m| m.fate == ContactFate::Left).count();
        let barred = c.values().filter(|m| m.fate == ContactFate::Removed).count();
        let weighted = [
            (Action::Tap, if untapped > 0 { 8 } else { 0 }),
            (Action::GroupMessage, if joined > 0 { 10 } else { 0 }),
            (Action::RoomMessage, if sends { 10 } else { 0 }),
            (Action::Leave, if joined > 1 { 2 } else { 0 }),
            (Action::ComeBack, if left_back > 0 { 2 } else { 0 }),
            (Action::Rename, if sends { 2 } else { 0 }),
            (Action::AddContact, if sends && c.len() < MAX_CONTACTS { 2 } else { 0 }),
            (Action::RemoveContact, if sends && removable > 0 { 2 } else { 0 }),
            (Action::AddAdvisor, if sends && outside > 0 { 2 } else { 0 }),
            (Action::RemoveAdvisor, if sends && plain > 0 { 1 } else { 0 }),
            (Action::Promote, if sends && plain > 0 { 2 } else { 0 }),
            (Action::Demote, if sends && demotable > 0 { 1 } else { 0 }),
            (Action::Reinvite, if left > 0 { 2 } else { 0 }),
            (Action::InviteBarred, if barred > 0 { 1 } else { 0 }),
            (Action::Info, 1),
            (Action::Stranger, 1),
        ];
        let total: u32 = weighted.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.gen_range(0..total);
        for (a, w) in weighted {
            if pick < w {
                return Some(a);
            }
            pick -= w;
        }
        None
    }

    /// Picks one of `items` (not empty) with the RNG.
    fn one<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        Some(items[self.rng.gen_range(0..items.len())].clone())
    }

    /// Contacts `/wa remove` may take: an invitee who has not tapped, or a joined contact
    /// unless they are the last one in.
    fn removable(&self) -> Vec<String> {
        let joined = self.g.contacts.values().filter(|m| m.fate == ContactFate::Joined).count();
        self.contacts_where(|p, m| {
            (m.fate == ContactFate::Joined && joined > 1)
                || (m.fate == ContactFate::Invited && !self.tapped.contains_key(p))
        })
    }

    /// Owners `/wa demote` may take: any but the creator.
    fn demotable(&self) -> Vec<i64> {
        self.members.iter().filter(|(u, o)| **o && **u != self.creator).map(|(u, _)| *u).collect()
    }

    fn contacts_where(&self, pred: impl Fn(&str, &ContactModel) -> bool) -> Vec<String> {
        self.g.contacts.iter().filter(|(p, m)| pred(p, m)).map(|(p, _)| p.clone()).collect()
    }

    fn token(&mut self, kind: char) -> String {
        self.next_message += 1;
        format!("soak-g{}-{kind}{}", self.g.index, self.next_message)
    }

    async fn step(&mut self) -> Result<(), String> {
        let Some(action) = self.choose() else { return Ok(()) };
        match action {
            Action::Tap => {
                let ready = self.contacts_where(|p, _| !self.tapped.contains_key(p));
                let Some(phone) = self.one(&ready) else { return Ok(()) };
                self.tapped.insert(phone.clone(), false);
                let joined_before = self.joined_posts(&phone);
                let link = self
                    .until(&format!("+{phone}'s invitation"), || self.invitation(&phone))
                    .await?;
                let tapped = self.ctx.sim.tap(&phone, &link);
                self.ctx.count("taps");
                match tapped["result"].as_str() {
                    Some("requested" | "joined") => {}
                    _ => return Err(format!("+{phone}'s invitation was refused: {tapped}")),
                }
                self.until(&format!("+{phone} let in"), || {
                    self.participants().contains(&phone).then_some(())
                })
                .await?;
                // The owner acts on what Symphony shows: the room says they joined.
                self.until(&format!("the room told +{phone} joined"), || {
                    (self.joined_posts(&phone) > joined_before).then_some(())
                })
                .await?;
                if let Some(m) = self.g.contacts.get_mut(&phone) {
                    m.fate = ContactFate::Joined;
                    m.joins += 1;
                }
                self.ctx.count("joins");
            }
            Action::GroupMessage => {
                let joined = self.contacts_where(|_, m| m.fate == ContactFate::Joined);
                let Some(phone) = self.one(&joined) else { return Ok(()) };
                let token = self.token('w');
                let wa = self.wa().to_owned();
                self.ctx
                    .sim
                    .send_as_phone(&phone, Some(&wa), &format!("{token} from WhatsApp"), None)
                    .map_err(|e| format!("+{phone} writing in the group: {e}"))?;
                self.g.to_room.push(token);
                self.ctx.count("messages WhatsApp → room");
            }
            Action::RoomMessage => {
                let members: Vec<i64> = self.members.keys().copied().collect();
                let Some(uid) = self.one(&members) else { return Ok(()) };
                let token = self.token('s');
                let room = self.room().to_owned();
                self.post(&room, uid, &format!("{token} from <b>Symphony</b>"))?;
                self.g.to_wa.push(token);
                self.ctx.count("messages room → WhatsApp");
            }
            Action::Leave => {
                let joined = self.contacts_where(|_, m| m.fate == ContactFate::Joined);
                let Some(phone) = self.one(&joined) else { return Ok(()) };
                let wa = self.wa().to_owned();
                self.ctx
                    .sim_post(&format!("/phones/{phone}/leave"), json!({"groupId": wa}))
                    .await?;
                if let Some(m) = self.g.contacts.get_mut(&phone) {
                    m.fate = ContactFate::Left;
                    m.leaves += 1;
                }
                // Coming back is tried only once the room was told (the bot knows they left).
                self.until(&format!("the room told +{phone} left"), || {
                    self.bot_said(&format!("+{phone})left"))
                        .then_some(())
                        .or_else(|| self.bot_said(&format!("+{phone}left")).then_some(()))
                })
                .await?;
                self.tapped.insert(phone, true);
                self.ctx.count("leaves");
            }
            Action::ComeBack => {
                let back = self.contacts_where(|p, m| {
                    m.fate == ContactFate::Left && self.tapped.get(p) == Some(&true)
                });
                let Some(phone) = self.one(&back) else { return Ok(()) };
                self.tapped.insert(phone.clone(), false);
                self.try_back(&phone, "rejoins after leaving").await?;
            }
            Action::Rename => {
                let name = format!("{} r{}", self.g.name, self.g.renames.len() + 1);
                self.command(&format!("/wa rename \"{name}\""))?;
                self.g.renames.push(name);
                self.ctx.count("command /wa rename");
            }
            Action::AddContact => {
                let phone = self.new_contact();
                self.command(&format!("/wa add +{phone}"))?;
                self.g.contacts.insert(phone, ContactModel::new(true));
                self.ctx.count("command /wa add contact");
            }
            Action::RemoveContact => {
                let removable = self.removable();
                let Some(phone) = self.one(&removable) else { return Ok(()) };
                self.command(&format!("/wa remove +{phone}"))?;
                self.ctx.count("command /wa remove contact");
                if let Some(m) = self.g.contacts.get_mut(&phone) {
                    m.fate = ContactFate::Removed;
                }
                self.tapped.insert(phone.clone(), false);
                self.until(&format!("+{phone} removed"), || {
                    (self.bot_said(&format!("+{phone})wasremoved"))
                        || self.bot_said(&format!("+{phone}wasremoved")))
                    .then_some(())
                })
                .await?;
                self.until(&format!("+{phone} out of the WhatsApp group"), || {
                    (!self.participants().contains(&phone)).then_some(())
                })
                .await?;
                // A removed contact tries to come back: refused for ever.
                self.try_back(&phone, "rejoins after removal").await?;
            }
            Action::AddAdvisor => {
                let outside: Vec<i64> = self
                    .ctx
                    .advisors
                    .iter()
                    .map(|a| a.0)
                    .filter(|a| !self.members.contains_key(a))
                    .collect();
                let Some(uid) = self.one(&outside) else { return Ok(()) };
                self.command(&format!("/wa add {}", mention(uid)))?;
                self.ctx.count("command /wa add advisor");
                self.until("the advisor in the room", || {
                    self.room_members().contains_key(&uid).then_some(())
                })
                .await?;
                self.members.insert(uid, false);
                let name = self.name_of(uid);
                self.g.advisors_added.push(name);
            }
            Action::RemoveAdvisor => {
                let plain: Vec<i64> =
                    self.members.iter().filter(|(_, o)| !**o).map(|(u, _)| *u).collect();
                let Some(uid) = self.one(&plain) else { return Ok(()) };
                self.command(&format!("/wa remove {}", mention(uid)))?;
                self.ctx.count("command /wa remove advisor");
                self.until("the advisor out of the room", || {
                    (!self.room_members().contains_key(&uid)).then_some(())
                })
                .await?;
                self.members.remove(&uid);
                let name = self.name_of(uid);
                self.g.advisors_removed.push(name);
            }
            Action::Promote => {
                let plain: Vec<i64> =
                    self.members.iter().filter(|(_, o)| !**o).map(|(u, _)| *u).collect();
                let Some(uid) = self.one(&plain) else { return Ok(()) };
                self.command(&format!("/wa promote {}", mention(uid)))?;
                self.ctx.count("command /wa promote");
                self.members.insert(uid, true);
                let name = self.name_of(uid);
                self.g.promoted.push(name);
            }
            Action::Demote => {
                let owners = self.demotable();
                let Some(uid) = self.one(&owners) else { return Ok(()) };
                self.command(&format!("/wa demote {}", mention(uid)))?;
                self.ctx.count("command /wa demote");
                self.members.insert(uid, false);
                let name = self.name_of(uid);
                self.g.demoted.push(name);
            }
            Action::Reinvite => {
                let left = self.contacts_where(|_, m| m.fate == ContactFate::Left);
                let Some(phone) = self.one(&left) else { return Ok(()) };
                let before = self.invitations(&phone);
                self.command(&format!("/wa invite +{phone}"))?;
                self.ctx.count("command /wa invite (after a leave)");
                // The new invitation must be out before they tap it.
                self.until(&format!("+{phone}'s new invitation"), || {
                    (self.invitations(&phone) > before).then_some(())
                })
                .await?;
                if let Some(m) = self.g.contacts.get_mut(&phone) {
                    m.fate = ContactFate::Invited;
                    m.invitations += 1;
                    m.invited_posts += 1;
                }
                self.tapped.remove(&phone);
            }
            Action::InviteBarred => {
                let barred = self.contacts_where(|_, m| m.fate == ContactFate::Removed);
                let Some(phone) = self.one(&barred) else { return Ok(()) };
                self.command(&format!("/wa invite +{phone}"))?;
                self.ctx.count("command /wa invite (barred: refused)");
                if let Some(m) = self.g.contacts.get_mut(&phone) {
                    m.refused_invites += 1;
                }
            }
            Action::Info => {
                self.command("/wa info")?;
                self.g.infos += 1;
                self.ctx.count("command /wa info");
            }
            Action::Stranger => {
                let link = self
                    .ctx
                    .sim
                    .group(self.wa())
                    .and_then(|g| g["inviteLink"].as_str().map(str::to_owned));
                let Some(link) = link else { return Ok(()) };
                let phone = stranger_phone(self.g.index, self.next_stranger);
                self.next_stranger += 1;
                let tapped = self.ctx.sim.tap(&phone, &link);
                self.ctx.count("stranger taps");
                if tapped["result"] == "requested" {
                    *self.g.strangers.entry(phone).or_default() += 1;
                }
            }
        }
        Ok(())
    }

    /// A contact who left or was removed taps the group's link (as if leaked) again:
    /// WhatsApp refuses a removed participant itself; any request that gets through must be
    /// rejected by the bot.
    async fn try_back(&mut self, phone: &str, what: &'static str) -> Result<(), String> {
        let current =
            self.ctx.sim.group(self.wa()).and_then(|g| g["inviteLink"].as_str().map(str::to_owned));
        let link = current.or_else(|| self.invitation(phone));
        let Some(link) = link else { return Ok(()) };
        let needle = format!("from+{phone}wasrejected");
        let before = self.bot_said_count(&needle);
        let tapped = self.ctx.sim.tap(phone, &link);
        self.ctx.count(what);
        if tapped["result"] == "requested" {
            // Nothing else happens to them until the bot said no (a later /wa invite must not
            // meet this request still pending).
            self.until(&format!("+{phone}'s request rejected"), || {
                (self.bot_said_count(&needle) > before).then_some(())
            })
            .await?;
        }
        if let (true, Some(m)) = (tapped["result"] == "requested", self.g.contacts.get_mut(phone)) {
            m.rejected_requests += 1;
        }
        Ok(())
    }
}
