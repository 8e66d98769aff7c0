//! API tests over real gRPC on loopback, against SQLite and PostgreSQL.
//!
//! A custom harness (Cargo.toml: `harness = false`): it starts one PostgreSQL server for the
//! whole run when `AGENTD_CONTROL_TEST_BACKENDS` includes `postgres` (default: `sqlite`), runs
//! every test against every backend, tears the server down, and prints libtest's summary line.
//! A backend that was asked for and cannot start is a failure, never a skip. Arguments that are
//! not flags filter tests by substring, like libtest.

#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]
#![allow(
    clippy::doc_markdown,
    reason = "prose names SQLite and PostgreSQL, not code"
)]

mod bounded;
mod ca_rotation;
mod cases;
mod conditional_access;
mod connections;
mod credentials;
mod duties;
mod host_certificates;
mod integrity;
mod jwt;
mod jwt_rotation;
mod postgres;
mod rbac;
mod support;

use std::{future::Future, pin::Pin, process::ExitCode, time::Instant};

use support::Backend;

type TestFn = fn(Backend) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! tests {
    ($($module:ident::$name:ident),+ $(,)?) => {
        &[$((stringify!($name), |backend| Box::pin($module::$name(backend)))),+]
    };
}

const TESTS: &[(&str, TestFn)] = tests![
    credentials::an_agent_svid_names_only_the_agent_and_is_signed_only_while_its_decision_allows,
    credentials::svid_lifetimes_follow_the_blueprint_and_bad_ones_are_refused_by_field,
    jwt::an_agent_jwt_svid_verifies_through_oidc_discovery_and_is_signed_only_while_allowed,
    jwt_rotation::a_rotated_jwt_key_is_published_before_it_signs_and_retired_only_once_its_tokens_expire,
    ca_rotation::a_rotated_ca_is_trusted_before_it_signs_and_hosts_keep_connecting_through_the_switch,
    ca_rotation::a_control_plane_from_before_rotations_keeps_its_ca,
    host_certificates::a_host_renews_its_certificate_over_the_current_one_and_a_revoked_host_cannot,
    rbac::every_method_with_every_role_is_allowed_or_denied_as_documented,
    rbac::calls_without_a_valid_token_are_unauthenticated,
    cases::bad_input_is_invalid_argument_naming_the_field,
    cases::agents_inherit_blueprint_defaults,
    cases::creating_an_agent_needs_a_sponsor_and_a_known_blueprint,
    cases::every_mutation_is_audited_with_the_previous_value,
    cases::a_mutation_whose_audit_record_fails_stores_nothing,
    cases::the_audit_log_refuses_updates_and_deletes,
    cases::sponsors_act_only_on_agents_they_answer_for,
    cases::lifecycle_transitions_are_enforced,
    cases::agents_expire_at_their_expiry_time,
    cases::agents_not_reconfirmed_in_time_are_disabled,
    cases::inactive_agents_are_disabled_and_host_reports_keep_them_active,
    cases::removing_the_last_sponsor_orphans_with_an_alert_or_reassigns,
    cases::access_packages_pass_approval_stages_and_expire_automatically,
    cases::access_package_stages_are_decided_by_their_approver,
    cases::join_tokens_are_single_use,
    cases::expired_join_tokens_are_refused,
    cases::a_revoked_host_is_cut_off_at_its_next_call,
    cases::revoked_api_tokens_stop_working,
    cases::host_reports_show_which_agents_run_where,
    cases::mtls_host_with_its_certificate_is_accepted,
    cases::mtls_host_call_without_a_certificate_is_refused,
    cases::mtls_certificate_from_another_ca_is_refused,
    cases::mtls_expired_certificate_is_refused,
    cases::mtls_certificate_of_another_host_is_refused,
    cases::two_replicas_share_one_database,
    cases::kill_9_during_writes_loses_no_acknowledged_write,
    cases::agentctl_drives_the_api_with_table_and_json_output,
    conditional_access::bad_policies_are_refused_by_field_and_the_policies_in_force_stay,
    conditional_access::policy_updates_are_versioned_and_audited_and_the_baseline_is_managed,
    conditional_access::what_if_explains_which_policies_apply_and_the_decision,
    conditional_access::decisions_carry_package_grants_and_governance_blocks,
    conditional_access::a_watch_gets_new_decisions_after_policy_risk_and_package_changes,
    conditional_access::a_watch_resumes_from_its_version_and_acks_show_in_get_host,
    conditional_access::detections_are_validated_by_field,
    conditional_access::a_watch_on_one_replica_gets_changes_made_through_another,
    conditional_access::agentctl_applies_policy_files_and_explains_decisions,
    conditional_access::a_watch_drops_a_package_grant_when_its_expiry_passes,
    conditional_access::hosts_share_decisions_only_when_no_policy_tells_them_apart,
    integrity::concurrent_policy_updates_with_one_expected_version_one_wins_the_other_is_aborted,
    integrity::a_stale_expected_version_is_aborted_naming_the_current_version,
    integrity::audit_verify_passes_on_an_intact_log_written_by_concurrent_writers,
    integrity::audit_verify_catches_an_edited_entry,
    integrity::audit_verify_catches_a_deleted_entry,
    integrity::audit_verify_catches_a_truncated_log,
    integrity::truncating_the_audit_log_is_refused,
    integrity::reported_detections_are_audited,
    integrity::an_upgraded_log_seals_its_older_entries_in_the_genesis_digest,
    integrity::the_audit_export_appends_every_event_once_with_its_digests,
    connections::silent_connections_are_closed_after_the_handshake_timeout_and_the_cap_refuses_at_once,
    connections::a_client_silent_after_its_tls_handshake_is_closed_at_the_idle_timeout,
    connections::a_client_that_only_answers_pings_is_closed_at_the_idle_timeout_and_a_watching_host_is_kept,
    connections::failed_authentications_from_one_source_are_throttled,
    connections::shutdown_with_watching_hosts_completes_within_seconds_and_watchers_see_unavailable,
    connections::sigterm_with_watching_hosts_exits_cleanly_within_seconds_and_hosts_resume,
    connections::at_its_open_file_limit_the_server_neither_spins_nor_locks_clients_out,
    bounded::alias_bombs_and_deep_nesting_are_refused_quickly_while_others_are_answered,
    bounded::duplicate_keys_are_refused_in_nested_maps,
    bounded::repeated_fields_past_their_cap_are_refused_naming_field_and_cap,
    bounded::errors_quote_a_bounded_prefix_of_what_was_sent,
    bounded::a_policy_selecting_only_unknown_names_is_refused_and_what_if_warns,
    duties::naming_oneself_as_the_sole_approver_is_refused,
    duties::a_requester_cannot_approve_their_own_package_and_widening_needs_another_admin,
    duties::owners_cannot_change_what_policies_and_governance_rely_on,
    duties::a_host_reports_detections_only_for_agents_it_runs,
    duties::a_join_token_bound_to_a_hostname_enrols_only_that_hostname,
    duties::a_second_live_host_with_the_same_hostname_is_refused,
    duties::a_hostname_equal_to_another_hosts_id_is_refused,
    duties::two_replicas_enrolling_one_hostname_at_once_enrol_one_host,
    duties::an_upgrade_keeps_live_duplicate_hostnames_and_claims_the_unique_ones,
];

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wanted = std::env::var("AGENTD_CONTROL_TEST_BACKENDS").unwrap_or_else(|_| "sqlite".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut passed = 0u32;
    let mut failed = Vec::new();
    let mut filtered = 0u32;
    let mut backends = Vec::new();
    let mut postgres = None;
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "sqlite" => backends.push(Backend::Sqlite),
            "postgres" => match postgres::PostgresServer::start() {
                Ok(server) => {
                    backends.push(Backend::Postgres {
                        admin_url: server.admin_url(),
                        base: server.url_of("").trim_end_matches('/').to_owned(),
                    });
                    postgres = Some(server);
                }
                Err(err) => {
                    println!("test postgres::start_server ... FAILED\n  {err:#}");
                    failed.push("postgres::start_server".to_owned());
                }
            },
            other => {
                println!(
                    "test backends::{other} ... FAILED (unknown backend; use sqlite,postgres)"
                );
                failed.push(format!("backends::{other}"));
            }
        }
    }
    let started = Instant::now();
    println!("\nrunning {} tests", TESTS.len() * backends.len());
    for backend in &backends {
        for (name, test) in TESTS {
            let full = format!("{}::{name}", backend.name());
            if !filters.is_empty() && !filters.iter().any(|f| full.contains(f.as_str())) {
                filtered += 1;
                continue;
            }
            let backend = backend.clone();
            let outcome = runtime.block_on(async move { tokio::spawn(test(backend)).await });
            match outcome {
                Ok(()) => {
                    println!("test {full} ... ok");
                    passed += 1;
                }
                Err(err) => {
                    let why =
                        err.try_into_panic()
                            .ok()
                            .and_then(|panic| {
                                panic.downcast_ref::<String>().cloned().or_else(|| {
                                    panic.downcast_ref::<&str>().map(|s| (*s).to_owned())
                                })
                            })
                            .unwrap_or_else(|| "cancelled".into());
                    println!("test {full} ... FAILED\n  {why}");
                    failed.push(full);
                }
            }
        }
    }
    drop(runtime);
    drop(postgres);
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {filtered} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}
