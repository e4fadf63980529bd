shared::main!(two_factor_disable);
