//! Column references: which columns a statement outputs, copies somewhere (source columns) or
//! sets (an UPDATE's SET list), for masking.

use super::{
    frame::Frame,
    functions::function_verdict,
    nodes::{FUNC_CALL, UPDATE_STMT, VIEW_STMT},
    walker::Walker,
    Class,
};

impl Walker {
    /// A ColumnRef is complete: file its name by where in the statement it sits.
    pub(super) fn column_ref(&mut self, f: &Frame) {
        let under = |field: &str| self.stack.iter().any(|a| a.field == field);
        let (in_target, in_returning) = (under("target_list"), under("returning_clause"));
        // A view is read through its definition, which the gateway traces; creating
        // one copies nothing.
        let in_view = self.stack.iter().any(|a| a.kind == VIEW_STMT);
        // An argument of a function that writes (pg_notify, lo_from_bytea, …) goes
        // somewhere, wherever in the statement the call is.
        let in_writing_call = self.stack.iter().any(|a| {
            a.kind == FUNC_CALL && {
                let name = a.value_strings("funcname").join(".").to_lowercase();
                function_verdict(&name).0 != Class::Read
            }
        });
        let name = f.value_strings("fields").join(".").to_lowercase();
        // The nearest target list decides: an UPDATE's SET list, or a query's output.
        let in_set = self
            .stack
            .iter()
            .rev()
            .find(|a| a.field == "target_list")
            .is_some_and(|a| a.kind == UPDATE_STMT);
        if !name.is_empty() {
            if in_set && !in_returning && !in_writing_call {
                self.set_columns.insert(name.clone());
            } else if (in_target && !in_returning && !in_view) || in_writing_call {
                self.source_columns.insert(name.clone());
            }
            if in_target || in_returning {
                self.output_columns.insert(name);
            }
        }
    }
}
