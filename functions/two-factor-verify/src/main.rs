shared::main!(two_factor_verify);
