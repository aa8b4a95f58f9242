fn main() {
    let img = castra::image::build(&Default::default(), &mut |l: &str| eprintln!("{l}")).unwrap();
    println!("{} {}", img.kernel.display(), img.initrd.display());
}
