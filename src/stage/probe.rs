//! `stage probe --result FILE`: the probe pod's command, run in the final
//! stage's base: evaluates the final image there ([`crate::recipe`]) and
//! publishes the recipe.

use std::path::Path;

use crate::contract::{FinalRecipe, failure_json, publish_result};
use crate::plan::BuildPlan;
use crate::recipe::RecipeError;

/// `stage probe`: evaluates the plan's final image where this process runs
/// (its `/`, environment and cwd are the base's) and writes the
/// [`FinalRecipe`] as JSON to `result`.
/// A failure is a result too: `{"status": "failed", "error": …}` naming
/// the line, so the build's status says what is wrong.
pub fn probe_plan(plan: Option<&Path>, result: &Path) -> Result<FinalRecipe, RecipeError> {
    let recipe = BuildPlan::load(plan)
        .map_err(RecipeError::from)
        .and_then(|plan| crate::recipe::evaluate_here(&plan));
    match recipe {
        Ok(recipe) => {
            let json = serde_json::to_vec_pretty(&recipe).map_err(|e| {
                crate::rootfs::FsError::Invalid {
                    path: result.to_path_buf(),
                    what: e.to_string(),
                }
            })?;
            publish_result(result, &json)?;
            Ok(recipe)
        }
        Err(e) => {
            publish_result(result, failure_json(&e.to_string()).as_bytes())?;
            Err(e)
        }
    }
}
