// Shared conventions for every Duet compute shader. Include after #version.
//
// - Storage buffers live in descriptor set 0 at bindings 0..N-1, in the order the host's
//   Dispatch call lists its views.
// - constant_id 0 is the workgroup size (x) where a shader has one tunable size, declared as
//   `layout(local_size_x_id = 0, local_size_x = <default>) in;` so that the default lives in
//   one place, and read back as gl_WorkGroupSize.x (never as a second constant_id 0 constant,
//   whose default glslang would not tie to the local size).
// - Large 1-D launches use Groups1D on the host: the group index is linearized over (x, y), and
//   groups past the end must return.
#ifndef DUET_COMMON_GLSL_
#define DUET_COMMON_GLSL_

#extension GL_EXT_control_flow_attributes : enable  // [[unroll]]

// Linear workgroup index of a Groups1D launch.
uint duet_group_index() {
  return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
}

#endif  // DUET_COMMON_GLSL_
