//! The console's overview page (groups by code and stage, the filtered list with paging, the
//! action panel, recent actions) and the login form, with the header and action panel the message
//! view shares. Rendered on the server from the same engine reads as the API.

use std::net::SocketAddr;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::SharedConsole;
use super::api::{Paging, matching};
use super::auth::{self, Access};
use super::html::{esc, frame, query_value, script_json};
use crate::dlq::summary::{Group, human_age};
use crate::dlq::{DeadLetter, Filter, Snapshot, Summary};

/// GET /
pub async fn overview(
    State(console): State<SharedConsole>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
    Query(paging): Query<Paging>,
) -> Response {
    let access = auth::access(&console, &headers, peer);
    let filter = filter.normalized();
    let snapshot = match console.snapshot().await {
        Ok(s) => s,
        Err(error) => return unavailable(&error.to_string()),
    };
    let summary = Summary::of(&snapshot, SystemTime::now());
    let all = matching(&snapshot.letters, &filter);
    let body = [
        top(&console.topology.dead(), summary.depth, &access),
        format!(
            "<main><div class=\"row2\">{}{}</div>",
            groups("By error code", "code", &summary.by_code),
            groups("By stage", "stage", &summary.by_stage)
        ),
        list(&filter, &all, &paging, &snapshot),
        actions(&filter, &access),
        recent(&console),
        "</main>".into(),
    ]
    .concat();
    Html(frame("cxrel dead letters", &body)).into_response()
}

/// GET /login
pub async fn login_form() -> Response {
    login(None)
}

/// The login page, with an error line when there is one.
pub fn login(error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"err\" id=\"login-error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<header><h1><a href=\"/\">cxrel dead letters</a></h1></header><main><section>\
         <h2>Log in</h2>{error}<form method=\"post\" action=\"/login\" class=\"inline\">\
         <label>Console token<input type=\"password\" name=\"token\" id=\"token\" \
         autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"login\">Log in</button></form>\
         <p class=\"muted\">The token is <code>[console].token</code> of the console's settings.</p>\
         </section></main>"
    );
    Html(frame("log in", &body)).into_response()
}

pub(super) fn unavailable(error: &str) -> Response {
    let body = format!(
        "<main><section><h2>The dead queue cannot be read</h2><p class=\"err\">{}</p>\
         <p>Reload when the broker is back.</p></section></main>",
        esc(error)
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(frame("unavailable", &body)),
    )
        .into_response()
}

pub(super) fn top(queue: &str, depth: u32, access: &Access) -> String {
    let who = match access {
        Access::ReadOnly => "<span class=\"muted\" id=\"mode\">read-only console</span>".into(),
        Access::Anonymous => "<a href=\"/login\" id=\"mode\">Log in to replay or purge</a>".into(),
        Access::Operator(name) => format!(
            "<span id=\"mode\">operator {}</span><form method=\"post\" action=\"/logout\">\
             <button class=\"plain\">Log out</button></form>",
            esc(name)
        ),
    };
    format!(
        "<header><h1><a href=\"/\" style=\"color:#fff;text-decoration:none\">cxrel dead letters\
         </a></h1><span>queue <code>{}</code></span><span>depth <b id=\"depth\">{depth}</b></span>\
         <span class=\"muted\">refreshed <span id=\"refreshed\">now</span></span>{who}</header>",
        esc(queue)
    )
}

fn groups(title: &str, attr: &str, groups: &[Group]) -> String {
    let rows: String = groups
        .iter()
        .map(|g| {
            format!(
                "<tr><td><a href=\"/?{attr}={}\">{}</a></td><td class=\"n\" data-count-{attr}=\"{}\">\
                 {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                query_value(&g.key),
                esc(&g.key),
                esc(&g.key),
                g.count,
                human_age(g.oldest_age_seconds),
                human_age(g.newest_age_seconds)
            )
        })
        .collect();
    let empty = if groups.is_empty() {
        "<tr><td colspan=\"4\" class=\"muted\">no dead letters</td></tr>"
    } else {
        ""
    };
    format!(
        "<section><h2>{title}</h2><table id=\"by-{attr}\"><tr><th>{attr}</th><th class=\"n\">count\
         </th><th class=\"n\">oldest</th><th class=\"n\">newest</th></tr>{rows}{empty}</table>\
         </section>"
    )
}

fn filter_form(filter: &Filter) -> String {
    let field = |name: &str, label: &str, value: Option<String>| {
        format!(
            "<label>{label}<input name=\"{name}\" value=\"{}\" size=\"14\"></label>",
            esc(&value.unwrap_or_default())
        )
    };
    let age = |d: Option<std::time::Duration>| d.map(|d| humantime::format_duration(d).to_string());
    [
        "<form class=\"inline\" method=\"get\" action=\"/\">".to_owned(),
        field("code", "code", filter.code.clone()),
        field("stage", "stage", filter.stage.clone()),
        field("job_id", "job id", filter.job_id.clone()),
        field("datastore", "data store", filter.datastore.clone()),
        field("older_than", "older than", age(filter.older_than)),
        field("newer_than", "newer than", age(filter.newer_than)),
        "<button type=\"submit\">Filter</button><a class=\"button plain\" href=\"/\">Clear</a></form>"
            .to_owned(),
    ]
    .concat()
}

fn list(filter: &Filter, all: &[&DeadLetter], paging: &Paging, snapshot: &Snapshot) -> String {
    let per_page = paging.per_page.clamp(1, 500);
    let pages = all.len().div_ceil(per_page).max(1);
    let page = paging.page.clamp(1, pages);
    let now = SystemTime::now();
    let rows: String = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|l| row(l, now))
        .collect();
    let missed = incomplete(snapshot);
    format!(
        "<section><h2>Dead letters</h2>{}<p><b id=\"matching\">{}</b> matching <code>{}</code>\
         </p>{missed}<table id=\"letters\"><tr><th></th><th>job id</th><th>code</th><th>stage</th>\
         <th>data store</th><th class=\"n\">attempts</th><th class=\"n\">replays</th><th class=\"n\">age</th>\
         <th>error</th></tr>\
         {rows}</table>{}</section>",
        filter_form(filter),
        all.len(),
        esc(&filter.describe()),
        pager(filter, page, pages, per_page)
    )
}

/// A warning when the read could not see everything.
fn incomplete(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    if snapshot.missed > 0 {
        out.push_str(&format!(
            "<p class=\"err\" id=\"missed\">{} more dead letters were present but not read.</p>",
            snapshot.missed
        ));
    }
    if snapshot.other_readers > 0 {
        out.push_str(&format!(
            "<p class=\"err\" id=\"readers\">{} other reader(s) are attached to the dead queue: \
             the messages they hold are not shown or counted.</p>",
            snapshot.other_readers
        ));
    }
    out
}

/// `id` as one URL path segment. `.` and `..` are encoded too: a browser would resolve them as
/// dot segments (`/letters/..` is `/`), never reaching the message.
fn path_segment(id: &str) -> String {
    let encoded = query_value(id).replace('+', "%20");
    if id == "." || id == ".." {
        return encoded.replace('.', "%2E");
    }
    encoded
}

fn row(letter: &DeadLetter, now: SystemTime) -> String {
    let id = letter.display_id();
    let link_id = letter.message_id().unwrap_or_else(|| id.clone());
    format!(
        "<tr><td><input type=\"checkbox\" class=\"pick\" value=\"{}\"></td><td><a href=\"/letters/{}\">\
         {}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td>{}</td></tr>",
        esc(&link_id),
        esc(&path_segment(&link_id)),
        esc(&id),
        esc(&letter.code()),
        esc(&letter.stage()),
        esc(&letter.datastore().unwrap_or_default()),
        letter.attempts(),
        letter.replay_count(),
        human_age(letter.age(now).map(|a| a.as_secs())),
        esc(&letter.error_message())
    )
}

fn pager(filter: &Filter, page: usize, pages: usize, per_page: usize) -> String {
    if pages <= 1 {
        return String::new();
    }
    let query = filter_query(filter);
    let link = |p: usize, text: &str| {
        format!("<a href=\"/?{query}page={p}&amp;per_page={per_page}\">{text}</a>")
    };
    let prev = if page > 1 {
        link(page - 1, "← newer")
    } else {
        String::new()
    };
    let next = if page < pages {
        link(page + 1, "older →")
    } else {
        String::new()
    };
    format!("<p>{prev} page {page} of {pages} {next}</p>")
}

/// The filter as query parameters (`code=x&amp;`…), escaped for an attribute.
fn filter_query(filter: &Filter) -> String {
    let value = serde_json::to_value(filter).unwrap_or_default();
    let mut out = String::new();
    for (key, v) in value.as_object().into_iter().flatten() {
        if let Some(text) = v.as_str() {
            out.push_str(&format!("{key}={}&amp;", query_value(text)));
        }
    }
    out
}

pub(super) fn actions(filter: &Filter, access: &Access) -> String {
    let export = format!(
        "<a class=\"button plain\" id=\"export\" href=\"/api/dead-letters/export?{}\">Export matching \
         (JSON Lines)</a>",
        filter_query(filter)
    );
    let data = format!(
        "<script type=\"application/json\" id=\"console-data\">{}</script>",
        script_json(&json!({ "filter": filter }))
    );
    let controls = match access {
        Access::Operator(_) => ACTION_CONTROLS,
        Access::Anonymous => "<p><a href=\"/login\">Log in</a> to replay or purge.</p>",
        Access::ReadOnly => {
            "<p class=\"muted\">Read-only console: set <code>[console].token</code> to allow replay \
             and purge.</p>"
        }
    };
    format!("<section id=\"actions\"><h2>Actions</h2>{data}{controls}<p>{export}</p></section>")
}

const ACTION_CONTROLS: &str = "<form class=\"inline\" onsubmit=\"return false\">\
<label>reason (required to replay)<input id=\"reason\" size=\"30\"></label>\
<label>rate /s<input id=\"rate\" size=\"5\" inputmode=\"decimal\"></label>\
<label>limit<input id=\"limit\" size=\"6\" inputmode=\"numeric\"></label>\
<button id=\"replay-selected\" onclick=\"ask('replay',true)\">Replay selected</button>\
<button id=\"replay-all\" onclick=\"ask('replay',false)\">Replay all matching</button>\
<button id=\"purge-all\" class=\"danger\" onclick=\"ask('purge',false)\">Purge matching</button>\
</form><div id=\"confirm\" hidden><span id=\"confirm-text\"></span> \
<button id=\"confirm-yes\" onclick=\"go()\">Confirm</button> \
<button class=\"plain\" onclick=\"cancel()\">Cancel</button></div><p id=\"result\"></p>";

fn recent(console: &SharedConsole) -> String {
    let rows: String = console
        .recent()
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
                 <td>{}</td></tr>",
                esc(&e.at),
                esc(&e.actor),
                esc(&e.action),
                esc(&e.filter),
                esc(&e.reason),
                e.count,
                esc(&e.outcome)
            )
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "<section><h2>Recent actions (this console)</h2><table id=\"audit\"><tr><th>when</th>\
         <th>who</th><th>action</th><th>filter</th><th>reason</th><th class=\"n\">count</th>\
         <th>outcome</th></tr>{rows}</table></section>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::letter::tests::letter;

    #[test]
    fn a_row_escapes_what_the_job_carried() {
        let l = letter("<script>", "j<1>", 5);
        let html = row(&l, SystemTime::now());
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("href=\"/letters/j%3C1%3E\""), "{html}");
    }

    #[test]
    fn dot_ids_link_to_their_message_instead_of_a_parent_path() {
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("."), "%2E");
        assert_eq!(path_segment("a.b"), "a.b");
    }

    #[test]
    fn pages_link_to_their_neighbours_keeping_the_filter() {
        let f = Filter {
            code: Some("timeout".into()),
            ..Filter::default()
        };
        let html = pager(&f, 2, 3, 50);
        assert!(
            html.contains("code=timeout&amp;page=1&amp;per_page=50"),
            "{html}"
        );
        assert!(html.contains("page=3"), "{html}");
        assert_eq!(pager(&f, 1, 1, 50), "");
    }

    #[test]
    fn only_an_operator_gets_the_action_buttons() {
        let f = Filter::default();
        assert!(actions(&f, &Access::Operator("token@x".into())).contains("replay-all"));
        assert!(!actions(&f, &Access::Anonymous).contains("replay-all"));
        assert!(actions(&Filter::default(), &Access::ReadOnly).contains("Read-only"));
    }
}
