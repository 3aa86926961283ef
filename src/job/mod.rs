//! Relationship jobs (SPEC §1): wire structs, the domain types they become, and the parser.
//!
//! Parse, don't validate: [`Job::parse`] is the only way from bytes to a [`Job`], and a `Job`
//! always satisfies the limits and id formats. Graph rules are the validator's job.

mod error;
mod ids;
mod parse;
mod types;
mod unique_keys;
mod wire;

pub use error::JobError;
pub use parse::{JobLimits, MAX_NAME_CHARS, ParseContext, is_datastore_id, printable_name};
pub use types::{CascadeAction, FieldName, Job, Mode, Operation, RecordId};
pub(crate) use wire::{JobWire, TutorialWire};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use crate::settings::IdFormat;

    const P: &str = "550e8400-e29b-41d4-a716-446655440000";
    const C: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

    fn ctx() -> ParseContext {
        ParseContext {
            limits: JobLimits::default(),
            id_format: IdFormat::Uuid,
            default_datastore: Some("accounts".into()),
            message_id: Some("msg-1".into()),
        }
    }

    fn parse(json: &str) -> Result<Job, JobError> {
        Job::parse(json.as_bytes(), &ctx())
    }

    fn op_json(extra: &str) -> String {
        format!(
            r#"{{"parent_id":"{P}","relationship_field":"parent_child_link","child_ids":["{C}"]{extra}}}"#
        )
    }

    #[test]
    fn a_body_with_a_byte_order_mark_or_gzip_says_so() {
        let mut bom = vec![0xef, 0xbb, 0xbf];
        bom.extend(op_json("").as_bytes());
        let err = Job::parse(&bom, &ctx()).unwrap_err().to_string();
        assert!(err.contains("byte-order mark"), "{err}");
        let err = Job::parse(&[0x1f, 0x8b, 8, 0], &ctx()).unwrap_err();
        assert!(err.to_string().contains("gzip"), "{err}");
        let duplicate = r#"{"datastore_id":"a","datastore_id":"b","operations":[]}"#;
        let err = parse(duplicate).unwrap_err().to_string();
        assert!(err.contains("\"datastore_id\" appears twice"), "{err}");
    }

    #[test]
    fn the_tutorials_example_parses_as_one_replace_operation() {
        let job = parse(&format!(
            r#"{{"parentId":"{P}","childIds":["{C}"],"relationshipField":"parent_child_link","cascadeAction":"update"}}"#
        ))
        .unwrap();
        assert_eq!(job.datastore_id, "accounts");
        assert_eq!(job.job_id, "msg-1");
        assert!(job.atomic);
        let op = &job.operations[0];
        assert_eq!(op.parent.as_str(), P);
        assert_eq!(op.children, vec![RecordId::new(C)]);
        assert_eq!(op.field.as_str(), "parent_child_link");
        assert_eq!(op.mode, Mode::Replace);
        assert_eq!(op.cascade, Some(CascadeAction::Update));
    }

    #[test]
    fn the_documented_shape_parses_with_its_defaults() {
        let job = parse(&format!(r#"{{"operations":[{}]}}"#, op_json(""))).unwrap();
        assert!(job.atomic);
        assert_eq!(job.operations[0].mode, Mode::Replace);
        assert_eq!(job.operations[0].cascade, None);
        assert_eq!(
            job.operations[0].cascade_after(CascadeAction::Delete),
            CascadeAction::None
        );
    }

    #[test]
    fn add_and_remove_without_a_cascade_keep_the_current_one() {
        let job = parse(&format!(
            r#"{{"atomic":false,"job_id":"j","datastore_id":"ds","operations":[{}]}}"#,
            op_json(r#","mode":"remove""#)
        ))
        .unwrap();
        assert!(!job.atomic);
        assert_eq!(
            (job.job_id.as_str(), job.datastore_id.as_str()),
            ("j", "ds")
        );
        assert_eq!(
            job.operations[0].cascade_after(CascadeAction::Delete),
            CascadeAction::Delete
        );
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_path() {
        let err = parse(&format!(
            r#"{{"operations":[{}]}}"#,
            op_json(r#","depth":3"#)
        ))
        .unwrap_err();
        assert_eq!(err.code(), "invalid_job");
        assert_eq!(err.path(), Some("$.operations[0].depth"));
        assert!(err.to_string().contains("depth"), "{err}");
        let err = parse(&format!(r#"{{"operations":[{}],"extra":1}}"#, op_json(""))).unwrap_err();
        assert_eq!(err.path(), Some("$.extra"));
    }

    #[test]
    fn a_bad_mode_names_its_path() {
        let err = parse(&format!(
            r#"{{"operations":[{}]}}"#,
            op_json(r#","mode":"merge""#)
        ))
        .unwrap_err();
        assert_eq!(err.code(), "invalid_job");
        assert_eq!(err.path(), Some("$.operations[0].mode"));
    }

    #[test]
    fn a_body_above_the_limit_is_payload_too_large() {
        let mut c = ctx();
        c.limits.max_body_bytes = 10;
        let err = Job::parse(b"{\"operations\":[]}", &c).unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
        assert_eq!(err.class(), ErrorClass::Permanent);
    }

    #[test]
    fn too_many_operations_has_its_own_code() {
        let mut c = ctx();
        c.limits.max_operations = 1;
        let body = format!(r#"{{"operations":[{},{}]}}"#, op_json(""), op_json(""));
        let err = Job::parse(body.as_bytes(), &c).unwrap_err();
        assert_eq!(err.code(), "too_many_operations");
    }

    #[test]
    fn too_many_children_names_the_operation() {
        let mut c = ctx();
        c.limits.max_children = 1;
        let op =
            format!(r#"{{"parent_id":"{P}","relationship_field":"f","child_ids":["{C}","{C}"]}}"#);
        let body = format!(r#"{{"operations":[{op}]}}"#);
        let err = Job::parse(body.as_bytes(), &c).unwrap_err();
        assert_eq!(err.code(), "too_many_children");
        assert_eq!(err.path(), Some("$.operations[0].child_ids"));
    }

    #[test]
    fn a_record_id_that_is_not_a_uuid_is_invalid_id_with_its_path() {
        let op =
            format!(r#"{{"parent_id":"{P}","relationship_field":"f","child_ids":["{C}","x"]}}"#);
        let err = parse(&format!(r#"{{"operations":[{op}]}}"#)).unwrap_err();
        assert_eq!(err.code(), "invalid_id");
        assert_eq!(err.path(), Some("$.operations[0].child_ids[1]"));
    }

    #[test]
    fn upper_case_uuids_are_kept_in_lower_case() {
        let upper = P.to_ascii_uppercase();
        let op =
            format!(r#"{{"parent_id":"{upper}","relationship_field":"f","child_ids":["{C}"]}}"#);
        let job = parse(&format!(r#"{{"operations":[{op}]}}"#)).unwrap();
        assert_eq!(job.operations[0].parent.as_str(), P);
    }

    #[test]
    fn dot_segment_ids_are_invalid_id_whatever_the_id_format() {
        // With `id_format = "any"` the record ids would otherwise be accepted; data store ids
        // are free-form in both formats.
        let any = ParseContext {
            id_format: IdFormat::Any,
            ..ctx()
        };
        for id in [".", "..", "%2e%2e", ".%2E"] {
            let cases = [
                (
                    format!(
                        r#"{{"datastore_id":"{id}","operations":[{}]}}"#,
                        op_json("")
                    ),
                    "$.datastore_id",
                ),
                (
                    format!(
                        r#"{{"operations":[{{"parent_id":"{id}","relationship_field":"f","child_ids":["c"]}}]}}"#
                    ),
                    "$.operations[0].parent_id",
                ),
                (
                    format!(r#"{{"parentId":"p","childIds":["{id}"],"relationshipField":"f"}}"#),
                    "$.childIds[0]",
                ),
            ];
            for (body, path) in cases {
                let err = Job::parse(body.as_bytes(), &any).unwrap_err();
                assert_eq!(
                    (err.code(), err.path()),
                    ("invalid_id", Some(path)),
                    "{body}"
                );
            }
            let body = format!(
                r#"{{"datastore_id":"{id}","operations":[{}]}}"#,
                op_json("")
            );
            assert_eq!(parse(&body).unwrap_err().code(), "invalid_id", "{body}");
        }
    }

    #[test]
    fn any_id_format_accepts_free_form_ids() {
        let mut c = ctx();
        c.id_format = IdFormat::Any;
        let body = r#"{"operations":[{"parent_id":"acct-1","relationship_field":"f","child_ids":["acct-2"]}]}"#;
        assert!(Job::parse(body.as_bytes(), &c).is_ok());
    }

    #[test]
    fn an_empty_operation_list_is_invalid() {
        let err = parse(r#"{"operations":[]}"#).unwrap_err();
        assert_eq!(err.path(), Some("$.operations"));
    }

    #[test]
    fn a_job_without_a_data_store_and_no_default_is_invalid() {
        let mut c = ctx();
        c.default_datastore = None;
        let body = format!(r#"{{"operations":[{}]}}"#, op_json(""));
        let err = Job::parse(body.as_bytes(), &c).unwrap_err();
        assert_eq!(err.path(), Some("$.datastore_id"));
    }

    #[test]
    fn without_a_message_id_the_job_id_is_a_new_uuid_v7() {
        let mut c = ctx();
        c.message_id = None;
        let body = format!(r#"{{"operations":[{}]}}"#, op_json(""));
        let job = Job::parse(body.as_bytes(), &c).unwrap();
        let id = uuid::Uuid::parse_str(&job.job_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn malformed_json_and_non_objects_are_invalid_job_at_the_root() {
        for body in ["{", "[]", "42", ""] {
            let err = parse(body).unwrap_err();
            assert_eq!(
                (err.code(), err.path()),
                ("invalid_job", Some("$")),
                "{body}"
            );
        }
    }

    #[test]
    fn the_parse_context_takes_limits_and_defaults_from_settings() {
        let settings = crate::settings::Settings::load_with_env(
            &crate::settings::Sources::default(),
            Some(std::collections::HashMap::new()),
        )
        .unwrap();
        let c = ParseContext::from(&settings).with_message_id(Some("m-9"));
        assert_eq!(c.limits, JobLimits::default());
        assert_eq!(c.id_format, IdFormat::Uuid);
        assert_eq!(c.default_datastore, None);
        assert_eq!(c.message_id.as_deref(), Some("m-9"));
    }
}
