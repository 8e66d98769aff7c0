//! Names in a policy's assignment that match nothing registered (docs/conditional-access.md,
//! "Names that match nothing"): a policy whose include names only agents and blueprints that
//! do not exist is refused when it is created or updated; what-if warns about every name that
//! matches nothing, for policies stored before their agent or blueprint went away.

use super::document::Selector;

/// What is registered: whether an agent id or name, and a blueprint name, exist.
pub struct Registered<'a> {
    pub agent: &'a dyn Fn(&str) -> bool,
    pub blueprint: &'a dyn Fn(&str) -> bool,
}

/// One warning per name in `include` that matches no registered agent or blueprint.
pub fn unknown_names(include: &Selector, registered: &Registered<'_>) -> Vec<String> {
    let agents = include
        .agents
        .iter()
        .filter(|name| !(registered.agent)(name))
        .map(|name| {
            format!(
                "assignments.include.agents names {}, which is no registered agent's id or name",
                crate::error::quoted(name)
            )
        });
    let blueprints = include
        .blueprints
        .iter()
        .filter(|name| !(registered.blueprint)(name))
        .map(|name| {
            format!(
                "assignments.include.blueprints names {}, which is no registered blueprint",
                crate::error::quoted(name)
            )
        });
    agents.chain(blueprints).collect()
}

/// True when `include` selects only by name (no `all`, no attributes) and none of its names
/// is registered: the policy could select no agent at all.
pub fn selects_nothing(include: &Selector, registered: &Registered<'_>) -> bool {
    !include.all
        && include.attributes.is_empty()
        && !include.agents.iter().any(|name| (registered.agent)(name))
        && !include
            .blueprints
            .iter()
            .any(|name| (registered.blueprint)(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(agents: &[&str], blueprints: &[&str]) -> Selector {
        Selector {
            agents: agents.iter().map(|s| (*s).to_owned()).collect(),
            blueprints: blueprints.iter().map(|s| (*s).to_owned()).collect(),
            ..Selector::default()
        }
    }

    #[test]
    fn only_unknown_names_select_nothing_and_each_is_warned() {
        let agent = |name: &str| name == "known-bot";
        let blueprint = |name: &str| name == "finance";
        let registered = Registered {
            agent: &agent,
            blueprint: &blueprint,
        };
        let ghost = selector(&["ghost-bot"], &["nowhere"]);
        assert!(selects_nothing(&ghost, &registered));
        assert_eq!(unknown_names(&ghost, &registered).len(), 2);
        let partly = selector(&["ghost-bot", "known-bot"], &[]);
        assert!(!selects_nothing(&partly, &registered));
        assert_eq!(
            unknown_names(&partly, &registered),
            [
                "assignments.include.agents names \"ghost-bot\", which is no registered agent's id or name"
            ]
        );
        let by_blueprint = selector(&["ghost-bot"], &["finance"]);
        assert!(!selects_nothing(&by_blueprint, &registered));
        let everyone = Selector {
            all: true,
            ..selector(&["ghost-bot"], &[])
        };
        assert!(!selects_nothing(&everyone, &registered));
    }
}
