//! `P`: a profile for a model that has none, made in the background
//! ([`crate::tui::profiling`]). The key starts the run (only without a profile, once the
//! prompt is prefilled) or cancels the one running; its progress shows in the status
//! line; when it ends with a profile, the head map's SRH marks, compresskv and the
//! budget preview use it at once, and the current settings are recomputed with it.

use super::{App, Cmd};
use crate::tui::msg::{FromWorker, ProfileProgress};
use crate::tui::stats::Stat;

pub(super) fn on_key(app: &mut App) -> Vec<Cmd> {
    if app.profiling.is_some() {
        app.notice = Some("cancelling profile make after the unit it is measuring".into());
        return vec![Cmd::CancelProfile];
    }
    if app.snapshot.is_none() {
        app.error = Some("P makes a profile once the prompt is prefilled".into());
        return Vec::new();
    }
    if app.ctl.has_profile {
        app.notice = Some(
            "this model has a profile already (`kvscope profile make --out FILE` makes another)"
                .into(),
        );
        return Vec::new();
    }
    app.profiling = Some(ProfileProgress::default());
    app.notice = Some("profile make started in the background; P cancels".into());
    vec![Cmd::StartProfile]
}

pub(super) fn on_worker(app: &mut App, m: FromWorker) -> Vec<Cmd> {
    match m {
        FromWorker::ProfileProgress(p) => {
            // A late unit of a run already ended (cancel raced the unit) changes nothing.
            if app.profiling.is_some() {
                app.profiling = Some(p);
            }
            Vec::new()
        }
        FromWorker::ProfileStopped { line, error } => {
            app.profiling = None;
            if error {
                app.error = Some(line);
            } else {
                app.notice = Some(line);
            }
            Vec::new()
        }
        FromWorker::ProfileMade {
            profile,
            path,
            note,
        } => {
            app.profiling = None;
            app.ctl.has_profile = true;
            app.stat = Stat::Srh;
            if let Some(s) = app.snapshot.as_mut() {
                s.set_profile(profile.clone());
            }
            app.notice = Some(note);
            // The result on screen was computed without the profile (or failed for want
            // of one): recompute the same settings with it.
            app.error = None;
            app.gen += 1;
            vec![Cmd::UseProfile { profile, path }, Cmd::SettingsChanged]
        }
        _ => Vec::new(),
    }
}
