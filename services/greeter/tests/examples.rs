//! The examples run as a user would run them, and do what they say.

#[path = "../examples/hello_mesh.rs"]
#[allow(dead_code)] // its `main` is the example's entry point, not called here
mod hello_mesh;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_mesh_gives_the_same_answer_locally_and_across_the_mesh() {
    let (local, over_the_mesh) = hello_mesh::run("Ada").await.expect("the example runs");
    assert_eq!(local, "Hello, Ada (postcard to Ada)");
    assert_eq!(over_the_mesh, local);
}
