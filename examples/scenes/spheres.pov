// fogwheel example: three spheres on a checkered floor, one light.
// fogwheel render examples/scenes/spheres.pov --width 320 --height 240 --out spheres.png --local 2
#version 3.7;
global_settings { assumed_gamma 1.0 }

camera { location <0, 2, -6> look_at <0, 0.8, 0> }
light_source { <4, 6, -5> color rgb 1 }
background { color rgb <0.55, 0.7, 0.9> }

plane { y, 0 pigment { checker color rgb 0.9 color rgb 0.15 } }
sphere { <0, 1, 0>, 1 pigment { color rgb <0.9, 0.2, 0.2> } finish { phong 0.6 } }
sphere { <-1.8, 0.6, 1>, 0.6 pigment { color rgb <0.2, 0.5, 0.9> } }
sphere { <1.7, 0.5, 0.5>, 0.5 pigment { color rgb <0.2, 0.8, 0.3> } finish { reflection 0.3 } }
