//! The scripted demo: the product's seed scenario played against a running sandbox through the
//! mock pod's and the simulator's control APIs only (as a person would act), with a readable
//! transcript of both sides. Every step checks what people would see; the first that does not
//! behave ends the demo with an error.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("step \"{step}\" did not behave: {reason}")]
    Step { step: String, reason: String },
    #[error("control API call {call} failed: {reason}")]
    Call { call: String, reason: String },
    #[error("cannot write the transcript: {0}")]
    Io(#[from] std::io::Error),
}

/// Who plays: the bot, two advisors (the creator first) and the contacts' phones.
#[derive(Debug, Clone)]
pub struct Cast {
    pub bot: i64,
    pub creator: (i64, String),
    pub advisor: (i64, String),
    /// WhatsApp ids (digits) and profile names; at least four: three join the group, the
    /// fourth is the ninth contact of the standard group.
    pub contacts: Vec<(String, String)>,
}

/// Plays the scenario against the mock pod at `pod_url` and the simulator at `sim_url`; each
/// step waits at most `step_timeout` for what it expects.
pub async fn run(
    pod_url: &str,
    sim_url: &str,
    cast: &Cast,
    step_timeout: Duration,
    out: &mut (dyn Write + Send),
) -> Result<(), DemoError> {
    let demo = Demo {
        http: reqwest::Client::new(),
        pod: pod_url.trim_end_matches('/').to_owned(),
        sim: sim_url.trim_end_matches('/').to_owned(),
        timeout: step_timeout,
    };
    demo.play(cast, out).await
}

struct Demo {
    http: reqwest::Client,
    pod: String,
    sim: String,
    timeout: Duration,
}

fn step_error(step: &str, reason: impl Into<String>) -> DemoError {
    DemoError::Step { step: step.to_owned(), reason: reason.into() }
}

/// Escapes text typed into the Symphony composer for MessageML.
fn typed(text: &str) -> String {
    format!("<messageML>{}</messageML>", crate::sandbox::symphony_rules::escape_message_ml(text))
}

impl Demo {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> Result<Value, DemoError> {
        let shown = format!("{method} {url}");
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| DemoError::Call { call: shown.clone(), reason: e.to_string() })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| DemoError::Call { call: shown.clone(), reason: e.to_string() })?;
        if !status.is_success() {
            return Err(DemoError::Call { call: shown, reason: format!("{status}: {text}") });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn pod_post(&self, path: &str, body: Value) -> Result<Value, DemoError> {
        self.call(reqwest::Method::POST, format!("{}{path}", self.pod), Some(body)).await
    }

    async fn pod_get(&self, path: &str) -> Result<Value, DemoError> {
        self.call(reqwest::Method::GET, format!("{}{path}", self.pod), None).await
    }

    async fn sim_post(&self, path: &str, body: Value) -> Result<Value, DemoError> {
        self.call(reqwest::Method::POST, format!("{}/_sandbox/wa{path}", self.sim), Some(body))
            .await
    }

    async fn sim_get(&self, path: &str) -> Result<Value, DemoError> {
        self.call(reqwest::Method::GET, format!("{}/_sandbox/wa{path}", self.sim), None).await
    }

    /// Polls `check` until it gives a value, or fails the step after the timeout.
    async fn until<T, F, Fut>(&self, step: &str, what: &str, mut check: F) -> Result<T, DemoError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, DemoError>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(step_error(step, format!("timed out waiting for {what}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn messages(&self, sid: &str) -> Result<Vec<Value>, DemoError> {
        Ok(self
            .pod_get(&format!("/_sandbox/streams/{sid}/messages"))
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits for a message of the bot in `sid`, posted after `seen` messages, containing `needle`.
    async fn bot_says(
        &self,
        step: &str,
        sid: &str,
        bot: i64,
        needle: &str,
    ) -> Result<String, DemoError> {
        self.bot_says_all(step, sid, bot, &[needle]).await
    }

    /// The bot's latest message in `sid` that contains every one of `needles`.
    async fn bot_says_all(
        &self,
        step: &str,
        sid: &str,
        bot: i64,
        needles: &[&str],
    ) -> Result<String, DemoError> {
        self.until(step, &format!("the bot to say {needles:?}"), || async {
            Ok(self.messages(sid).await?.iter().rev().find_map(|m| {
                let text = m["text"].as_str()?;
                (m["user"]["userId"] == bot && needles.iter().all(|n| text.contains(n)))
                    .then(|| text.to_owned())
            }))
        })
        .await
    }

    async fn say(
        &self,
        sid: &str,
        who: &(i64, String),
        text: &str,
        out: &mut (dyn Write + Send),
    ) -> Result<(), DemoError> {
        writeln!(out, "  [Symphony] {}: {text}", who.1)?;
        self.pod_post(
            &format!("/_sandbox/streams/{sid}/messages"),
            json!({"as": who.0, "messageML": typed(text)}),
        )
        .await?;
        Ok(())
    }

    async fn group(&self, id: &str) -> Result<Value, DemoError> {
        self.sim_get(&format!("/groups/{id}")).await
    }

    async fn play(&self, cast: &Cast, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
        let (alice, bob) = (&cast.creator, &cast.advisor);
        if cast.contacts.len() < 4 {
            return Err(step_error("cast", "the demo needs at least four WhatsApp contacts"));
        }
        let members = &cast.contacts[..3];
        for (phone, name) in &cast.contacts {
            self.call(
                reqwest::Method::PUT,
                format!("{}/_sandbox/wa/phones/{phone}", self.sim),
                Some(json!({"name": name})),
            )
            .await?;
        }
        writeln!(
            out,
            "wa-groups-bot demo: {} creates a WhatsApp group with {} and three contacts.\n",
            alice.1, bob.1
        )?;

        // 1. Create.
        let step = "create a native group";
        writeln!(out, "1. {step}")?;
        let im = self.pod_post("/_sandbox/ims", json!({"members": [alice.0, cast.bot]})).await?["streamId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| step_error(step, "no IM stream id"))?;
        let numbers: Vec<String> = members.iter().map(|(p, _)| format!("+{p}")).collect();
        let command =
            format!("/wa create \"Deal team\" <mention uid=\"{}\"/> {}", bob.0, numbers.join(" "));
        writeln!(
            out,
            "  [Symphony] {}: /wa create \"Deal team\" @{} {}",
            alice.1,
            bob.1,
            numbers.join(" ")
        )?;
        self.pod_post(
            &format!("/_sandbox/streams/{im}/messages"),
            json!({"as": alice.0, "messageML": format!("<messageML>{command}</messageML>")}),
        )
        .await?;
        let reply = self.bot_says(step, &im, cast.bot, "Creating Deal team").await?;
        writeln!(out, "  [Symphony] bot: {reply}")?;
        let room = self
            .until(step, "the room", || async {
                let streams =
                    self.pod_get(&format!("/_sandbox/streams?member={}", alice.0)).await?;
                Ok(streams.as_array().and_then(|a| {
                    a.iter()
                        .find(|s| s["type"] == "ROOM" && s["name"] == "Deal team")
                        .and_then(|s| s["streamId"].as_str().map(str::to_owned))
                }))
            })
            .await?;
        let group = self
            .until(step, "the WhatsApp group", || async {
                let groups = self.sim_get("/groups").await?;
                Ok(groups
                    .as_array()
                    .and_then(|a| a.iter().find(|g| g["subject"] == "Deal team").cloned()))
            })
            .await?;
        let gid = group["id"].as_str().unwrap_or_default().to_owned();
        writeln!(
            out,
            "  [WhatsApp] group {gid} \"Deal team\", join approval: {}",
            group["joinApprovalMode"].as_str().unwrap_or("?")
        )?;
        let ready = self.bot_says(step, &room, cast.bot, "is ready").await?;
        writeln!(out, "  [Symphony] bot in Deal team: {ready}")?;

        // 2. Each contact gets their invitation and joins.
        let step = "each contact joins";
        writeln!(out, "\n2. {step}")?;
        for (phone, name) in members {
            let link = self
                .until(step, &format!("{name}'s invitation"), || async {
                    let inbox = self.sim_get(&format!("/phones/{phone}/inbox")).await?;
                    Ok(inbox.as_array().and_then(|a| {
                        a.iter()
                            .find(|m| {
                                m["type"] == "template"
                                    && m["template"]["params"][0].as_str().is_some_and(|l| {
                                        l.starts_with("https://chat.whatsapp.com/")
                                    })
                            })
                            .and_then(|m| m["template"]["params"][0].as_str().map(str::to_owned))
                    }))
                })
                .await?;
            writeln!(out, "  [WhatsApp] {name} (+{phone}) received the invitation: {link}")?;
            let tapped =
                self.sim_post(&format!("/phones/{phone}/tap"), json!({"link": link})).await?;
            writeln!(
                out,
                "  [WhatsApp] {name} taps it: {}",
                tapped["result"].as_str().unwrap_or("?")
            )?;
            // Named as people name them once WhatsApp showed the profile: "Dana Reyes (+44 …)".
            let who = format!("{name} (+");
            let joined = self.bot_says_all(step, &room, cast.bot, &[&who, "joined"]).await?;
            writeln!(out, "  [Symphony] bot: {joined}")?;
        }
        let participants = self.group(&gid).await?["participants"].clone();
        let expected: Vec<&str> = members.iter().map(|(p, _)| p.as_str()).collect();
        if participants != json!(expected) {
            return Err(step_error(step, format!("the group's participants are {participants}")));
        }

        // 3. Messages both ways.
        let step = "messages both ways";
        writeln!(out, "\n3. {step}")?;
        let (jane_phone, jane) = &members[0];
        self.sim_post(
            &format!("/phones/{jane_phone}/messages"),
            json!({"to": gid, "text": "Hello from WhatsApp!"}),
        )
        .await?;
        writeln!(out, "  [WhatsApp] {jane}: Hello from WhatsApp!")?;
        let shown = self.bot_says(step, &room, cast.bot, "Hello from WhatsApp!").await?;
        writeln!(out, "  [Symphony] bot: {shown}")?;
        self.say(&room, alice, "Welcome, everyone", out).await?;
        let seen = self
            .until(step, "the advisor's message in the WhatsApp group", || async {
                let g = self.group(&gid).await?;
                Ok(g["messages"].as_array().and_then(|a| {
                    a.iter().find_map(|m| {
                        m["text"]
                            .as_str()
                            .filter(|t| t.contains("Welcome, everyone"))
                            .map(str::to_owned)
                    })
                }))
            })
            .await?;
        writeln!(out, "  [WhatsApp] group: {seen}")?;

        // 4. Rename.
        let step = "rename";
        writeln!(out, "\n4. {step}")?;
        self.say(&room, alice, "/wa rename \"Deal team (EMEA)\"", out).await?;
        let notice = self.group_notice(step, &gid, "Deal team (EMEA)").await?;
        writeln!(out, "  [WhatsApp] group notice: {notice}")?;
        if self.group(&gid).await?["subject"] != "Deal team (EMEA)" {
            return Err(step_error(step, "the WhatsApp subject did not follow"));
        }

        // 5. Promote.
        let step = "promote an advisor";
        writeln!(out, "\n5. {step}")?;
        writeln!(out, "  [Symphony] {}: /wa promote @{}", alice.1, bob.1)?;
        // The mention goes as the client sends it: a mention entity, matched by user id.
        self.pod_post(&format!("/_sandbox/streams/{room}/messages"), json!({"as": alice.0, "messageML": format!("<messageML>/wa promote <mention uid=\"{}\"/></messageML>", bob.0)})).await?;
        let notice = self.group_notice(step, &gid, &format!("{} is now an owner", bob.1)).await?;
        writeln!(out, "  [WhatsApp] group notice: {notice}")?;

        // 6. Remove a contact; they are barred.
        let step = "remove a contact";
        writeln!(out, "\n6. {step}")?;
        let (gone_phone, gone) = &members[2];
        self.say(&room, alice, &format!("/wa remove +{gone_phone}"), out).await?;
        let who = format!("{gone} (+");
        let said = self.bot_says_all(step, &room, cast.bot, &[&who, "was removed"]).await?;
        writeln!(out, "  [Symphony] bot: {said}")?;
        self.until(step, &format!("{gone} out of the WhatsApp group"), || async {
            let p = self.group(&gid).await?["participants"].clone();
            Ok((!p.as_array().is_some_and(|a| a.iter().any(|x| x == gone_phone.as_str())))
                .then_some(()))
        })
        .await?;
        writeln!(out, "  [WhatsApp] {gone} is no longer in the group")?;

        // 7. Their new attempt to join fails.
        let step = "a removed contact cannot come back";
        writeln!(out, "\n7. {step}")?;
        let link = self.group(&gid).await?["inviteLink"].as_str().unwrap_or_default().to_owned();
        let tapped =
            self.sim_post(&format!("/phones/{gone_phone}/tap"), json!({"link": link})).await?;
        let result = tapped["result"].as_str().unwrap_or("?").to_owned();
        writeln!(
            out,
            "  [WhatsApp] {gone} taps the group's link: {result}{}",
            tapped["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
        )?;
        match result.as_str() {
            "refused" => {}
            "requested" => {
                let rejected = self.bot_says(step, &room, cast.bot, "rejected").await?;
                writeln!(out, "  [Symphony] bot: {rejected}")?;
            }
            other => {
                return Err(step_error(step, format!("the removed contact's tap was {other}")));
            }
        }
        let p = self.group(&gid).await?["participants"].clone();
        if p.as_array().is_some_and(|a| a.iter().any(|x| x == gone_phone.as_str())) {
            return Err(step_error(step, "the removed contact is back in the group"));
        }

        // 8. Nine contacts make a standard group.
        let step = "nine contacts make a standard group";
        writeln!(out, "\n8. {step}")?;
        let mut nine: Vec<String> = (1..=8).map(|i| format!("+4479111239{i:02}")).collect();
        nine.push(format!("+{}", cast.contacts[3].0));
        self.say(&im, alice, &format!("/wa create \"Big desk\" {}", nine.join(" ")), out).await?;
        let reply = self.bot_says(step, &im, cast.bot, "Creating Big desk").await?;
        writeln!(out, "  [Symphony] bot: {reply}")?;
        if !reply.contains("standard") {
            return Err(step_error(step, format!("the reply does not say standard: {reply}")));
        }
        writeln!(out, "\nEvery step behaved.")?;
        Ok(())
    }

    /// Waits for a notice (the notice template's text) in the WhatsApp group containing `needle`.
    async fn group_notice(&self, step: &str, gid: &str, needle: &str) -> Result<String, DemoError> {
        self.until(step, &format!("a notice saying {needle:?}"), || async {
            let g = self.group(gid).await?;
            Ok(g["messages"].as_array().and_then(|a| {
                a.iter().find_map(|m| {
                    m["template"]["params"][0]
                        .as_str()
                        .filter(|t| t.contains(needle))
                        .map(str::to_owned)
                })
            }))
        })
        .await
    }
}
