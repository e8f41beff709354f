// fogwheel example animation: a small moon orbits a sphere as `clock` runs from 0 to 1.
// fogwheel render examples/scenes/orbit.pov --frames 24 --width 160 --height 120 --out orbit.png
#version 3.7;
global_settings { assumed_gamma 1.0 }

camera { location <0, 3, -7> look_at <0, 0.8, 0> }
light_source { <-5, 8, -4> color rgb 1 }
background { color rgb <0.08, 0.08, 0.15> }

plane { y, 0 pigment { checker color rgb 0.8 color rgb 0.3 scale 0.75 } }
sphere { <0, 1, 0>, 1 pigment { color rgb <0.95, 0.75, 0.2> } finish { phong 0.8 } }
sphere {
  <2.2, 1, 0>, 0.35
  rotate y * 360 * clock
  pigment { color rgb <0.3, 0.6, 1> }
  finish { reflection 0.2 }
}
