//! Reconcile: observe -> plan -> execute.
