shared::main!(two_factor_start_setup);
