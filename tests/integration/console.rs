//! The sandbox's web console in a real browser: headless Chromium plays an advisor who creates
//! a WhatsApp group and a contact's phone that joins it, and each side sees the other's
//! message. Also: the sandbox's worlds survive a restart.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wa_groups_bot::app::{
    SANDBOX_ADVISORS, SANDBOX_BOT, SANDBOX_CONTACTS, SandboxOptions, start_sandbox,
};

use crate::support::browser::{Browser, js};

const WAIT: Duration = Duration::from_secs(30);
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 860;

/// JavaScript: types `text` into the field `field` and presses the button `button`.
fn type_and_press(field: &str, button: &str, text: &str) -> String {
    format!(
        "(() => {{ document.querySelector({f}).value = {t}; document.querySelector({b}).click(); return true; }})()",
        f = js(field),
        t = js(text),
        b = js(button),
    )
}

/// JavaScript: clicks the item of list `list` whose text contains `text`; false if none.
fn click_item(list: &str, text: &str) -> String {
    format!(
        "(() => {{ const li = [...document.querySelectorAll({l})].find(li => li.textContent.includes({t})); if (!li) return false; li.click(); return true; }})()",
        l = js(&format!("{list} li")),
        t = js(text),
    )
}

/// JavaScript: whether the element `selector` shows `text`.
fn shows(selector: &str, text: &str) -> String {
    format!("document.querySelector({}).innerText.includes({})", js(selector), js(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisor_and_a_phone_create_join_and_chat_through_the_console() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SandboxOptions { data_dir: dir.path().join("sandbox"), base_port: 0 };
    let sandbox = start_sandbox(&opts, CancellationToken::new()).await.expect("sandbox starts");
    let browser = Browser::launch(WIDTH, HEIGHT).await;
    let page = browser.open(&sandbox.console.url(), WIDTH, HEIGHT).await;
    let (alice, dana) = (SANDBOX_ADVISORS[0], SANDBOX_CONTACTS[0]);

    // Alice is the advisor shown, in her IM with the bot; Dana's phone is the phone shown.
    page.wait_for(
        "Alice in her IM with the bot",
        WAIT,
        &format!(
            "document.querySelector('#advisor').selectedOptions[0].textContent === {} && {}",
            js(alice.2),
            shows("#stream-title", "IM: WhatsApp Groups")
        ),
    )
    .await;
    page.wait_for("Dana's phone", WAIT, &shows("#phone option:checked", dana.1)).await;

    // An Elements form from the bot is shown with its inputs and can be filled and sent.
    let form = "<messageML><form id=\"check\"><text-field name=\"name\" label=\"Group name\"/>\
                <person-selector name=\"advisors\" label=\"Advisors\"/>\
                <checkbox name=\"native\" value=\"on\" checked=\"true\">Native</checkbox>\
                <button name=\"go\" type=\"action\">Go</button></form></messageML>";
    sandbox.pod.post_message(&sandbox.im, SANDBOX_BOT.0, form).expect("the bot posts a form");
    page.wait_for(
        "the form's inputs",
        WAIT,
        "document.querySelector('#messages form.elements-form input.person-selector') \
         && document.querySelector('#messages form.elements-form input[type=checkbox]').checked",
    )
    .await;
    page.eval(
        "(() => { const f = document.querySelector('#messages form.elements-form'); \
         f.querySelector('input[name=name]').value = 'Formed'; \
         f.querySelector('input.person-selector').value = 'Bob Smith'; \
         f.querySelector('button').click(); return true; })()",
    )
    .await;
    page.wait_for("the form sent", WAIT, &shows("#messages form.elements-form", "Submitted")).await;

    // The same form as the agent renders Elements into PresentationML (inputs, a person
    // selector div, labels bound by id) gives the same inputs.
    let agent_form = "<div data-format=\"PresentationML\" data-version=\"2.0\"><form id=\"f1\">\
        <div class=\"textfield-group\" data-generated=\"true\"><label for=\"textfield-AB\">Group name</label>\
        <input type=\"text\" name=\"name\" placeholder=\"Deal team\" value=\"Desk &amp; co\" id=\"textfield-AB\"/></div>\
        <div class=\"person-selector\" data-name=\"who\" data-value=\"[10003]\"></div>\
        <textarea name=\"numbers\" placeholder=\"One per line\">+44</textarea>\
        <div class=\"checkbox-group\"><input type=\"checkbox\" name=\"native\" checked=\"true\" value=\"on\" id=\"cb-AB\"/>\
        <label for=\"cb-AB\">Native</label></div>\
        <button type=\"action\" name=\"go\">Create</button></form></div>";
    let fields = page
        .eval(&format!(
            "(() => {{ const d = document.createElement('div'); d.append(renderPresentation({}, {{messageId: 'x'}})); document.body.append(d); \
             const f = d.querySelector('form.elements-form'); \
             const shown = [f.dataset.formId, f.querySelector('input[name=name]').value, \
                     f.querySelector('input.person-selector').value, f.querySelector('textarea').value, \
                     f.querySelector('input[type=checkbox]').checked, f.querySelector('button').name, \
                     f.querySelector('label').control === f.querySelector('input[name=name]')]; \
             d.remove(); return shown; }})()",
            js(agent_form)
        ))
        .await;
    assert_eq!(fields, json!(["f1", "Desk & co", "10003", "+44", true, "go", true]));

    let create = format!("/wa create \"Console desk\" +{}", dana.0);
    page.eval(&type_and_press("#compose-text", "#send", &create)).await;
    page.wait_for("Alice's command in her IM", WAIT, &shows("#messages", &create)).await;
    page.wait_for("the new room in Alice's chats", WAIT, &click_item("#streams", "Console desk"))
        .await;
    page.wait_for("the room open", WAIT, &shows("#stream-title", "Console desk")).await;
    page.wait_for("the bot's group ready message", WAIT, &shows("#messages", "is ready")).await;
    page.wait_for("the room's members", WAIT, &shows("#members", "Alice Ng")).await;

    // The phone received the invitation: a template with the group's link and a Tap button.
    let invitation = page
        .wait_for(
            "the invitation on Dana's phone",
            WAIT,
            "document.querySelector('#wa-messages .wa-message button.tap')?.dataset.link",
        )
        .await;
    let link = invitation.as_str().expect("a link").to_owned();
    assert!(link.starts_with("https://chat.whatsapp.com/"), "{link}");
    assert!(page.eval(&shows("#wa-messages", &link)).await == json!(true));
    page.eval("document.querySelector('#wa-messages button.tap').click()").await;
    page.wait_for("the tap's answer", WAIT, &shows("#toast", "Request to join sent")).await;

    // The bot approves the invited contact: the room says so, the phone has the group.
    let joined = format!("{} (+44 7911 123456) joined the WhatsApp group", dana.1);
    page.wait_for("the join in the room", WAIT, &shows("#messages", &joined)).await;
    page.wait_for("the group in Dana's chats", WAIT, &click_item("#chats", "Console desk")).await;
    page.wait_for("the group chat open", WAIT, &shows("#chat-title", "Console desk")).await;

    // A message each way, each shown on the other side with its author.
    let from_phone = "Hello from Dana's phone";
    page.eval(&type_and_press("#wa-compose-text", "#wa-send", from_phone)).await;
    page.wait_for("Dana's message in the room", WAIT, &shows("#messages", from_phone)).await;
    let line = page
        .eval(&format!(
            "[...document.querySelectorAll('#messages .message')].map(m => m.innerText).find(t => t.includes({})) || ''",
            js(from_phone)
        ))
        .await;
    let line = line.as_str().unwrap_or_default();
    assert!(line.contains(dana.1) && line.contains(&format!("+{}", dana.0)), "{line}");

    let from_room = "Hello from Alice in Symphony";
    page.eval(&type_and_press("#compose-text", "#send", from_room)).await;
    page.wait_for("Alice's message on the phone", WAIT, &shows("#wa-messages", from_room)).await;
    let bubble = page
        .eval(&format!(
            "[...document.querySelectorAll('#wa-messages .wa-message')].map(m => m.innerText).find(t => t.includes({})) || ''",
            js(from_room)
        ))
        .await;
    assert!(bubble.as_str().is_some_and(|b| b.contains(alice.2)), "{bubble}");
    // The phone's own message is on its side of the chat.
    let own = page
        .eval(&format!(
            "[...document.querySelectorAll('#wa-messages .wa-message.out')].some(m => m.innerText.includes({}))",
            js(from_phone)
        ))
        .await;
    assert_eq!(own, json!(true));

    // The screenshot (for the README) without the last notice over the composer.
    page.eval("document.querySelector('#toast').hidden = true").await;
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console.png");
    page.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "a blank screenshot");

    // Typed markup is text on both sides, never markup.
    let markup = "<b>not bold</b> & <img src=x>";
    page.eval(&type_and_press("#compose-text", "#send", markup)).await;
    page.wait_for("the markup as text in the room", WAIT, &shows("#messages", markup)).await;
    page.wait_for("the markup as text on the phone", WAIT, &shows("#wa-messages", markup)).await;
    assert_eq!(
        page.eval("document.querySelectorAll('#messages img, #wa-messages img').length").await,
        json!(0)
    );
    browser.close().await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_keeps_rooms_messages_groups_and_phones_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SandboxOptions { data_dir: dir.path().join("sandbox"), base_port: 0 };
    let (alice, bob) = (SANDBOX_ADVISORS[0].0, SANDBOX_ADVISORS[1].0);
    let phone = SANDBOX_CONTACTS[1].0;

    let first = start_sandbox(&opts, CancellationToken::new()).await.expect("first start");
    let im = first.im.clone();
    first.pod.post_message(&im, alice, "<messageML>Before the restart</messageML>").expect("post");
    let room = first.pod.create_room(alice, "Kept room", &[bob]).expect("room");
    first.sim.send_as_phone(phone, None, "Phone wrote before", None).expect("phone writes");
    first.stop().await;

    let second = start_sandbox(&opts, CancellationToken::new()).await.expect("second start");
    assert_eq!(second.im, im, "the IM with the bot is the same one");
    assert!(second.pod.messages(&im).iter().any(|m| m.text == "Before the restart"));
    let streams = second.pod.streams();
    let kept = streams.iter().find(|s| s["streamId"] == room.as_str()).expect("the room");
    assert_eq!(kept["name"], "Kept room");
    assert_eq!(kept["members"].as_array().map(Vec::len), Some(2));

    // Through the console's proxy, as the page sees it.
    let console = second.console.url();
    let me: Value = reqwest::get(format!("{console}wa/_sandbox/wa/phones/{phone}"))
        .await
        .expect("proxied")
        .json()
        .await
        .expect("json");
    assert_eq!(me["name"], SANDBOX_CONTACTS[1].1);
    assert_eq!(me["sent"][0]["text"], "Phone wrote before");
    second.stop().await;
}
