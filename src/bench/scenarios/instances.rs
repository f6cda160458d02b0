//! P5: several instances on one PostgreSQL (DESIGN.md §7) — the `/wa help` burst and the relay
//! both ways with 1, 2 and 3 instances of the bot, each a process of its own on a fresh database
//! of a throwaway PostgreSQL; the simulator spreads webhooks over the instances and every
//! instance reads the one datafeed. CPU per event is the instances' together.

use std::time::{Duration, Instant};

use super::super::process::BotProcess;
use super::super::{BenchError, BenchOptions, Report, Row, percentile_ms};
use super::{
    BOT, IM_USERS, Keys, WorkDir, World, burst, cpu_of, free_port, mib, relay_groups, relay_phase,
    setup, thousands,
};

/// Starts `count` instances on the database at `url`; returns them once each is healthy.
async fn start_instances(
    world: &World,
    opts: &BenchOptions,
    keys: &Keys,
    templates: &std::path::Path,
    url: &str,
    count: usize,
) -> Result<Vec<BotProcess>, BenchError> {
    let mut ports = vec![world.webhook_port];
    while ports.len() < count {
        ports.push(free_port()?);
    }
    let urls: Vec<String> =
        ports.iter().map(|p| format!("http://127.0.0.1:{p}/whatsapp/webhook")).collect();
    world.sim.set_webhook_urls(&urls);
    let store = format!("{{url: \"{url}\"}}");
    let mut bots = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let config =
            world.bot_config_at(keys, templates, &store, *port, &format!("bot-{i}.yaml"))?;
        let log = world.dir.join(format!("bot-{i}.log"));
        let args = [std::ffi::OsStr::new("run"), "--config".as_ref(), config.as_os_str()];
        let label = format!("instance {i}");
        // `WAGB_BENCH_RUST_LOG` as for the other scenarios' bot.
        let filter = std::env::var("WAGB_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
        bots.push(BotProcess::spawn(&label, &opts.bot, &args, &log, &[("RUST_LOG", &filter)])?);
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    for (bot, port) in bots.iter_mut().zip(&ports) {
        loop {
            if let Some(status) = bot.exited() {
                return Err(setup(format!("{} exited at its start ({status})", bot.label)));
            }
            let health = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                return Err(setup(format!("{} not healthy within 90 s", bot.label)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(bots)
}

pub async fn p5(
    opts: &BenchOptions,
    work: &WorkDir,
    keys: &Keys,
    templates: &std::path::Path,
    report: &mut Report,
) -> Result<(), BenchError> {
    // (instances, commands/s, relayed/s each way)
    let mut rates: Vec<(usize, f64, f64)> = Vec::new();
    for count in 1..=opts.p5_instances {
        let Some(db) = crate::store::throwaway::database("bench P5") else {
            report.notes.push("P5: no PostgreSQL could be found or started; not measured".into());
            return Ok(());
        };
        let mut world = World::new(work, &format!("p5-{count}"), keys, Duration::ZERO).await?;
        let bots = start_instances(&world, opts, keys, templates, db.url(), count).await;
        let bots = match bots {
            Ok(bots) => bots,
            Err(e) => {
                world.shutdown().await;
                return Err(e);
            }
        };
        let refs: Vec<&BotProcess> = bots.iter().collect();
        let measured = async {
            let mut ims = Vec::new();
            for u in IM_USERS {
                ims.push((world.pod.create_im(&[u, BOT]).map_err(setup)?, u));
            }
            let help = burst(&mut world, &refs, BOT, &ims, opts.p5_commands).await?;
            let groups = relay_groups(&mut world, opts.p5_groups).await?;
            let mut phases = Vec::new();
            for to_room in [true, false] {
                let cpu0 = cpu_of(&refs)?;
                let phase =
                    relay_phase(&mut world, &groups, opts.p5_messages, opts.p5_rate, to_room)
                        .await?;
                phases.push((to_room, phase, cpu_of(&refs)?.saturating_sub(cpu0)));
                world.drain();
            }
            Ok::<_, BenchError>((help, phases))
        }
        .await;
        for bot in bots {
            bot.stop().await;
        }
        world.shutdown().await;
        let (help, phases) = measured?;
        let who = format!("{count} instance{}", if count == 1 { "" } else { "s" });
        let n = opts.p5_commands;
        let help_rate = n as f64 / help.elapsed.as_secs_f64().max(1e-9);
        report.rows.push(Row {
            scenario: "P5 /wa help burst, PostgreSQL".into(),
            bot: who.clone(),
            size: thousands(n),
            throughput: Some(help_rate),
            cpu_us: Some(help.cpu.as_secs_f64() * 1e6 / n as f64),
            p50_ms: percentile_ms(&help.latencies, 50.0),
            p99_ms: percentile_ms(&help.latencies, 99.0),
            peak_rss_mib: Some(mib(help.peak_kib)),
            note: format!("answered {}/{n}", help.answered),
        });
        let once = help.answered == n && help.wrong_ims == 0;
        report.check(
            format!("P5 {who}: every command answered once"),
            once,
            if once {
                String::new()
            } else {
                format!("{} answers to {n} commands, {} IMs off", help.answered, help.wrong_ims)
            },
        );
        let m = opts.p5_messages;
        let mut relay_rate = f64::INFINITY;
        for (to_room, phase, cpu) in phases {
            let way = if to_room { "WhatsApp → room" } else { "room → WhatsApp" };
            let rate = phase.arrived as f64 / phase.elapsed.as_secs_f64().max(1e-9);
            relay_rate = relay_rate.min(rate);
            report.rows.push(Row {
                scenario: format!("P5 relay {way}, PostgreSQL"),
                bot: who.clone(),
                size: format!(
                    "{} msgs, {} groups, {}/s sent",
                    thousands(m),
                    opts.p5_groups,
                    opts.p5_rate
                ),
                throughput: Some(rate),
                cpu_us: Some(cpu.as_secs_f64() * 1e6 / m as f64),
                p50_ms: percentile_ms(&phase.latencies, 50.0),
                p99_ms: percentile_ms(&phase.latencies, 99.0),
                peak_rss_mib: None,
                note: format!("arrived {}/{m}", phase.arrived),
            });
            // Order per group across instances is not guaranteed (README, "Running several
            // instances"): counted in a note, not checked.
            let ok = phase.arrived == m && phase.duplicates == 0;
            report.check(
                format!("P5 {who} {way}: every message once"),
                ok,
                if ok {
                    String::new()
                } else {
                    format!("{}/{m} arrived, {} twice", phase.arrived, phase.duplicates)
                },
            );
            if phase.out_of_order > 0 {
                report.notes.push(format!(
                    "P5 {who} {way}: {} of {} groups got some messages out of order",
                    phase.out_of_order, opts.p5_groups
                ));
            }
        }
        rates.push((count, help_rate, relay_rate));
    }
    if let Some(&(_, help1, relay1)) = rates.first() {
        for &(count, help, relay) in rates.iter().skip(1) {
            report.notes.push(format!(
                "P5 {count} instances vs 1: /wa help {:.2}× the throughput, relay {:.2}× (slower way)",
                help / help1,
                relay / relay1
            ));
        }
    }
    Ok(())
}
