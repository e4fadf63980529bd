shared::main!(two_factor_validate);
