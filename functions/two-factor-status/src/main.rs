shared::main!(two_factor_status);
